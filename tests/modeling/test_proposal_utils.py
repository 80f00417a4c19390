import math

import pytest
import torch

from heron.modeling.proposal_generator.proposal_utils import (
    add_ground_truth_to_proposals,
    find_top_rpn_proposals,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances


def _level(boxes, logits):
    return torch.tensor([boxes], dtype=torch.float32), torch.tensor([logits], dtype=torch.float32)


def test_top_k_per_level_then_nms_per_level_then_post_top_k():
    # level 0: two overlapping boxes and a separate one; level 1: a copy of the best box
    p0, l0 = _level([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], [3.0, 2.0, 1.0])
    p1, l1 = _level([[0, 0, 10, 10]], [2.5])
    out = find_top_rpn_proposals(
        [p0, p1],
        [l0, l1],
        [(50, 50)],
        nms_thresh=0.5,
        pre_nms_topk=3,
        post_nms_topk=10,
        min_box_size=0.0,
        training=False,
    )[0]
    # IoU of the first two boxes is 90/110 > 0.5: box 1 is suppressed; NMS never crosses
    # levels, so level 1's duplicate stays
    assert out.objectness_logits.tolist() == [3.0, 2.5, 1.0]
    torch.testing.assert_close(out.proposal_boxes.tensor[1], torch.tensor([0.0, 0, 10, 10]))


def test_pre_topk_clipping_and_min_size():
    p0, l0 = _level([[-5, -5, 10, 10], [0, 0, 0.5, 40], [5, 5, 8, 8]], [1.0, 3.0, 2.0])
    out = find_top_rpn_proposals(
        [p0],
        [l0],
        [(20, 30)],
        0.7,
        pre_nms_topk=2,
        post_nms_topk=5,
        min_box_size=1.0,
        training=False,
    )[0]
    # pre-top-2 keeps logits 3.0 and 2.0; the 0.5-px-wide box is dropped by min size
    assert out.objectness_logits.tolist() == [2.0]
    out = find_top_rpn_proposals([p0], [l0], [(20, 30)], 0.7, 3, 5, 0.0, False)[0]
    clipped = out.proposal_boxes.tensor[out.objectness_logits == 1.0][0]
    torch.testing.assert_close(clipped, torch.tensor([0.0, 0, 10, 10]))


def test_non_finite_predictions_raise_in_training_and_are_dropped_in_inference():
    p0, l0 = _level([[0, 0, 10, 10], [0, 0, math.nan, 10]], [1.0, 2.0])
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_rpn_proposals([p0], [l0], [(20, 20)], 0.7, 5, 5, 0.0, training=True)
    out = find_top_rpn_proposals([p0], [l0], [(20, 20)], 0.7, 5, 5, 0.0, training=False)[0]
    assert out.objectness_logits.tolist() == [1.0]


def test_ground_truth_is_appended_with_top_objectness():
    proposals = Instances(
        (20, 20),
        proposal_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])),
        objectness_logits=torch.tensor([0.3]),
    )
    gt = Instances(
        (20, 20), gt_boxes=Boxes(torch.tensor([[1.0, 1, 9, 9]])), gt_classes=torch.tensor([2])
    )
    (out,) = add_ground_truth_to_proposals([gt], [proposals])
    assert len(out) == 2
    torch.testing.assert_close(out.proposal_boxes.tensor[1], torch.tensor([1.0, 1, 9, 9]))
    # log(p / (1 - p)) with p = 1 - 1e-10, as Detectron2
    assert out.objectness_logits[1].item() == pytest.approx(math.log((1 - 1e-10) / 1e-10), rel=1e-4)
    assert set(out.get_fields()) == {"proposal_boxes", "objectness_logits"}
