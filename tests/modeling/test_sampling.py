import pytest
import torch

from heron.modeling.sampling import subsample_labels


def _labels(num_pos, num_neg, num_ignore=0):
    return torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(num_ignore)]).long()


def test_sample_respects_the_positive_fraction():
    labels = _labels(10, 100, 5)
    pos, neg = subsample_labels(labels, num_samples=20, positive_fraction=0.25, bg_label=0)
    assert (len(pos), len(neg)) == (5, 15)
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 5 and len(set(neg.tolist())) == 15


def test_negatives_fill_in_for_missing_positives():
    pos, neg = subsample_labels(_labels(2, 100), num_samples=20, positive_fraction=0.5, bg_label=0)
    assert (len(pos), len(neg)) == (2, 18)


def test_fewer_samples_when_not_enough_of_either():
    pos, neg = subsample_labels(_labels(1, 3), num_samples=20, positive_fraction=0.5, bg_label=0)
    assert (len(pos), len(neg)) == (1, 3)


def test_generator_makes_the_draw_reproducible():
    labels = _labels(50, 50)
    a = subsample_labels(labels, 10, 0.5, 0, generator=torch.Generator().manual_seed(3))
    b = subsample_labels(labels, 10, 0.5, 0, generator=torch.Generator().manual_seed(3))
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_invalid_fraction_raises():
    with pytest.raises(ValueError, match="positive_fraction"):
        subsample_labels(_labels(1, 1), 2, 1.5, 0)
