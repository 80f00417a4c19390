import math

import pytest
import torch
from torch.nn import functional as F
from torchvision import ops

from heron.layers.losses import (
    ciou_loss,
    diou_loss,
    giou_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_jit,
    sigmoid_focal_loss_star,
    smooth_l1_loss,
)


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 10
    wh = torch.rand(n, 2, generator=g) * 5 + 0.1
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- smooth L1


def test_smooth_l1_is_quadratic_below_beta_and_linear_above():
    input = torch.tensor([0.5, -0.5, 3.0, -2.0])
    loss = smooth_l1_loss(input, torch.zeros(4), beta=1.0)
    # |x| < 1: 0.5 * x**2 / 1 = 0.125; |x| >= 1: |x| - 0.5 -> 2.5, 1.5
    torch.testing.assert_close(loss, torch.tensor([0.125, 0.125, 2.5, 1.5]))


def test_smooth_l1_with_tiny_beta_is_l1():
    input = torch.tensor([0.001, -2.0])
    torch.testing.assert_close(smooth_l1_loss(input, torch.zeros(2), beta=0.0), input.abs())
    torch.testing.assert_close(smooth_l1_loss(input, torch.zeros(2), beta=1e-6), input.abs())


def test_smooth_l1_matches_torch_and_reduces():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, generator=g), torch.randn(10, generator=g)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            smooth_l1_loss(a, b, beta=0.3, reduction=reduction),
            F.smooth_l1_loss(a, b, beta=0.3, reduction=reduction),
        )


def test_smooth_l1_mean_of_empty_input_is_zero_with_graph():
    input = torch.zeros(0, 4, requires_grad=True)
    loss = smooth_l1_loss(input, torch.zeros(0, 4), beta=0.1, reduction="mean")
    assert loss.item() == 0.0 and loss.requires_grad
    assert smooth_l1_loss(input, torch.zeros(0, 4), beta=0.1).shape == (0, 4)


def test_losses_reject_unknown_reduction():
    with pytest.raises(ValueError, match=r"smooth_l1_loss: reduction must be one of .* got 'avg'"):
        smooth_l1_loss(torch.zeros(1), torch.zeros(1), 1.0, reduction="avg")
    with pytest.raises(ValueError, match="giou_loss: reduction"):
        giou_loss(torch.zeros(4), torch.zeros(4), reduction="max")


# ---------------------------------------------------------------- IoU losses


def test_giou_loss_of_adjacent_unit_squares_is_one():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 2.0, 1.0]])
    # IoU 0; enclosing box area 2 = union 2, so GIoU = 0 - 0 / 2 = 0 and the loss is 1.
    torch.testing.assert_close(giou_loss(a, b), torch.tensor([1.0]))


def test_giou_loss_of_distant_squares_approaches_two():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([3.0, 0.0, 4.0, 1.0])
    # IoU 0, union 2, enclosing 4 * 1 = 4: GIoU = -(4 - 2) / 4 = -0.5 -> loss 1.5
    torch.testing.assert_close(giou_loss(a, b), torch.tensor(1.5))


def test_giou_loss_of_overlapping_boxes_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 7, enclosing 9: GIoU = 1/7 - 2/9 -> loss 1 - 1/7 + 2/9
    torch.testing.assert_close(giou_loss(a, b), torch.tensor([1 - 1 / 7 + 2 / 9]))
    torch.testing.assert_close(giou_loss(a, a), torch.tensor([0.0]))


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (giou_loss, ops.generalized_box_iou_loss),
        (diou_loss, ops.distance_box_iou_loss),
        (ciou_loss, ops.complete_box_iou_loss),
    ],
)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_match_torchvision(ours, reference, reduction):
    a, b = _random_boxes(20, seed=1), _random_boxes(20, seed=2)
    torch.testing.assert_close(
        ours(a, b, reduction=reduction), reference(a, b, reduction=reduction)
    )


def test_diou_loss_by_hand():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 1.0, 3.0, 3.0])
    # IoU 1/7; centres (1, 1) and (2, 2): d**2 = 2; enclosing diagonal c**2 = 9 + 9 = 18
    torch.testing.assert_close(diou_loss(a, b), torch.tensor(1 - 1 / 7 + 2 / 18))


def test_ciou_loss_adds_aspect_ratio_term_by_hand():
    a = torch.tensor([0.0, 0.0, 2.0, 1.0])  # 2 x 1
    b = torch.tensor([0.0, 0.0, 1.0, 1.0])  # 1 x 1, same corner
    # IoU 1/2; centres (1, 0.5), (0.5, 0.5): d**2 = 0.25; enclosing 2 x 1: c**2 = 5
    # v = 4 / pi**2 * (atan(1) - atan(2))**2, alpha = v / (1 - 1/2 + v)
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v / (0.5 + v)
    torch.testing.assert_close(ciou_loss(a, b), torch.tensor(0.5 + 0.25 / 5 + alpha * v))


def test_ciou_loss_alpha_carries_no_gradient():
    a = torch.tensor([[0.0, 0.0, 2.0, 1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    ciou_loss(a, b).sum().backward()
    reference = a.detach().clone().requires_grad_()
    ops.complete_box_iou_loss(reference, b).sum().backward()
    torch.testing.assert_close(a.grad, reference.grad)


@pytest.mark.parametrize("loss_fn", [giou_loss, diou_loss, ciou_loss])
def test_iou_losses_of_no_boxes(loss_fn):
    boxes = torch.zeros(0, 4, requires_grad=True)
    assert loss_fn(boxes, torch.zeros(0, 4)).shape == (0,)
    mean = loss_fn(boxes, torch.zeros(0, 4), reduction="mean")
    assert mean.item() == 0.0 and mean.requires_grad
    assert loss_fn(boxes, torch.zeros(0, 4), reduction="sum").item() == 0.0


@pytest.mark.parametrize("loss_fn", [giou_loss, diou_loss, ciou_loss])
def test_iou_losses_reject_inverted_boxes(loss_fn):
    with pytest.raises(ValueError, match="x2 >= x1 and y2 >= y1"):
        loss_fn(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


# ---------------------------------------------------------------- focal losses


def test_focal_loss_with_gamma_zero_and_no_alpha_is_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g)
    targets = (torch.rand(4, 5, generator=g) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0), expected)


def test_focal_loss_by_hand():
    # logit 0: p = 0.5 for a positive; BCE = log 2; (1 - p_t)**2 = 0.25; alpha_t = 0.25
    # logit 0, negative target: same BCE and factor, alpha_t = 0.75
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.25, 0.75]) * 0.25 * math.log(2))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_loss_matches_torchvision(reduction):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g)
    targets = (torch.rand(6, 3, generator=g) > 0.7).float()
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets, alpha=0.3, gamma=1.5, reduction=reduction),
        ops.sigmoid_focal_loss(logits, targets, alpha=0.3, gamma=1.5, reduction=reduction),
    )


def test_focal_loss_computes_in_float32_and_aliases():
    loss = sigmoid_focal_loss(
        torch.zeros(3, dtype=torch.float16), torch.ones(3, dtype=torch.float16)
    )
    assert loss.dtype == torch.float32
    assert sigmoid_focal_loss_jit is sigmoid_focal_loss


def test_focal_loss_star_with_gamma_one_is_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, generator=g)
    targets = (torch.rand(10, generator=g) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss_star(logits, targets), expected)


def test_focal_loss_star_by_hand():
    # x = 1, positive, gamma 2: -log(sigmoid(2)) / 2, weighted by alpha = 0.25
    # x = 1, negative: x_t = -1: -log(sigmoid(-2)) / 2, weighted by 0.75
    loss = sigmoid_focal_loss_star(torch.ones(2), torch.tensor([1.0, 0.0]), alpha=0.25, gamma=2)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    expected = torch.tensor([0.25 * -math.log(sig(2)) / 2, 0.75 * -math.log(sig(-2)) / 2])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        sigmoid_focal_loss_star(torch.ones(2), torch.tensor([1.0, 0.0]), 0.25, 2, "sum"),
        expected.sum(),
    )


def test_focal_losses_of_empty_input_are_empty():
    empty = torch.zeros(0, 3)
    assert sigmoid_focal_loss(empty, empty).shape == (0, 3)
    assert sigmoid_focal_loss_star(empty, empty).shape == (0, 3)
    assert sigmoid_focal_loss(empty, empty, reduction="sum").item() == 0.0
