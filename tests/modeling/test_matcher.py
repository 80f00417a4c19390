import pytest
import torch

from heron.modeling.matcher import Matcher


def test_labels_by_interval():
    m = Matcher([0.3, 0.7], [0, -1, 1])
    iou = torch.tensor([[0.9, 0.4, 0.1, 0.7], [0.2, 0.6, 0.0, 0.3]])
    matches, labels = m(iou)
    # column maxima 0.9 (gt0), 0.6 (gt1), 0.1 (gt0), 0.7 (gt0; 0.7 is in [0.7, inf))
    assert matches.tolist() == [0, 1, 0, 0]
    assert labels.tolist() == [1, -1, 0, 1]
    assert labels.dtype == torch.int8


def test_low_quality_matches_make_each_gts_best_prediction_positive():
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    iou = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.4, 0.4]])
    _, labels = m(iou)
    # gt1's best IoU is 0.4, reached by predictions 1 and 2 (a tie): both become positive
    assert labels.tolist() == [1, 1, 1]


def test_no_ground_truth_gives_the_lowest_label():
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(0, 3))
    assert matches.tolist() == [0, 0, 0]
    assert labels.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "thresholds, labels, message",
    [
        ([0.7, 0.3], [0, -1, 1], "increasing"),
        ([0.5], [0, 2], "-1, 0 or 1"),
        ([0.5], [0], "2 labels"),
    ],
)
def test_invalid_configuration_raises(thresholds, labels, message):
    with pytest.raises(ValueError, match=message):
        Matcher(thresholds, labels)
