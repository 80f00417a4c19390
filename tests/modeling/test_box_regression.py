import math

import pytest
import torch

from heron.modeling.box_regression import (
    Box2BoxTransform,
    Box2BoxTransformLinear,
    Box2BoxTransformRotated,
    _dense_box_regression_loss,
)


def test_deltas_of_a_shifted_box():
    t = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    tgt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    # centres (5,5) -> (10,15): dx = 10*5/10, dy = 10*10/10; sizes 10x10 -> 10x20: dh = 5*log 2
    torch.testing.assert_close(
        t.get_deltas(src, tgt), torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2)]])
    )


def test_apply_inverts_get_deltas():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 100
    src = torch.cat([xy, xy + 1 + torch.rand(20, 2, generator=g) * 50], dim=1)
    xy = torch.rand(20, 2, generator=g) * 100
    tgt = torch.cat([xy, xy + 1 + torch.rand(20, 2, generator=g) * 50], dim=1)
    t = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(
        t.apply_deltas(t.get_deltas(src, tgt), src), tgt, rtol=1e-5, atol=1e-4
    )


def test_apply_deltas_class_specific_and_clamped():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0, 0.0]])  # 2 classes
    out = t.apply_deltas(deltas, boxes)
    torch.testing.assert_close(out[:, :4], boxes)
    # dw clamped to log(1000/16): width 16 * 1000/16 = 1000 around centre 8
    torch.testing.assert_close(out[0, 4:], torch.tensor([8 - 500.0, 0.0, 8 + 500.0, 16.0]))


def test_rotated_deltas_wrap_the_angle():
    t = Box2BoxTransformRotated(weights=(1.0, 1.0, 1.0, 1.0, 1.0))
    src = torch.tensor([[10.0, 10.0, 4.0, 2.0, 170.0]])
    tgt = torch.tensor([[12.0, 9.0, 8.0, 2.0, -170.0]])
    # -170 - 170 = -340 deg, wrapped to +20 deg
    expected = torch.tensor([[0.5, -0.5, math.log(2), 0.0, math.radians(20)]])
    torch.testing.assert_close(t.get_deltas(src, tgt), expected)
    torch.testing.assert_close(t.apply_deltas(expected, src), tgt, rtol=1e-5, atol=1e-4)


def test_linear_deltas_are_side_distances():
    t = Box2BoxTransformLinear(normalize_by_size=True)
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), size 10
    tgt = torch.tensor([[1.0, 2.0, 8.0, 9.0]])
    deltas = t.get_deltas(src, tgt)
    torch.testing.assert_close(deltas, torch.tensor([[0.4, 0.3, 0.3, 0.4]]))
    torch.testing.assert_close(t.apply_deltas(deltas, src), tgt)


def test_dense_loss_smooth_l1_sums_foreground_errors():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])]
    pred = [torch.zeros(1, 2, 4)]
    gt = [torch.tensor([[2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])]
    fg = torch.tensor([[True, False]])
    # foreground anchor: gt deltas (0.2, 0, 0, 0); L1 with beta 0 -> 0.2
    loss = _dense_box_regression_loss(anchors, t, pred, gt, fg, "smooth_l1", 0.0)
    torch.testing.assert_close(loss, torch.tensor(0.2))


def test_dense_loss_giou_is_zero_for_perfect_boxes_and_rejects_unknown_types():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    pred = [torch.zeros(1, 1, 4)]
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    fg = torch.tensor([[True]])
    torch.testing.assert_close(
        _dense_box_regression_loss(anchors, t, pred, gt, fg, "giou"), torch.tensor(0.0)
    )
    with pytest.raises(ValueError, match="'l3'"):
        _dense_box_regression_loss(anchors, t, pred, gt, fg, "l3")
