"""Detection losses with fvcore's / Detectron2's definitions.

Box losses take XYXY boxes `(..., 4)`; classification losses take logits. Every loss
accepts `reduction` in {"none", "mean", "sum"}. For the box losses, a "mean" over no
elements is a graph-connected 0 rather than NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "ciou_loss",
    "diou_loss",
    "giou_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_jit",
    "sigmoid_focal_loss_star",
    "smooth_l1_loss",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str, func: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{func}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Reduce a box loss; the mean of nothing is 0 (connected to the graph), not NaN."""
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float, reduction: str = "none") -> Tensor:
    """Smooth L1 (Huber-like) loss, elementwise.

    With n = |input - target|: 0.5 * n**2 / beta where n < beta, else n - 0.5 * beta.
    beta < 1e-5 gives the plain L1 loss (avoids dividing by ~0), as in fvcore. Unlike
    `torch.nn.functional.smooth_l1_loss`, beta = 0 is allowed.

    Args:
        input, target: tensors of the same shape.
        beta: L1-to-L2 transition point, >= 0.
        reduction: "none", "mean" or "sum".
    """
    _check_reduction(reduction, "smooth_l1_loss")
    if beta < 1e-5:
        loss = torch.abs(input - target)
    else:
        n = torch.abs(input - target)
        loss = torch.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)
    return _reduce(loss, reduction)


def _check_boxes(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor, func: str) -> None:
    if not bool((x2 >= x1).all()) or not bool((y2 >= y1).all()):
        raise ValueError(f"{func}: boxes1 must have x2 >= x1 and y2 >= y1 (XYXY)")


def _intersection_union(
    boxes1: Tensor, boxes2: Tensor, eps_in_union: float
) -> tuple[Tensor, Tensor]:
    """Intersection area and union area (plus `eps_in_union`) of paired XYXY boxes."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    intsct = torch.zeros_like(x1)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsct[overlap] = (xkis2[overlap] - xkis1[overlap]) * (ykis2[overlap] - ykis1[overlap])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsct + eps_in_union
    return intsct, union


def _enclosing_corners(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Corners (xc1, yc1, xc2, yc2) of the smallest box enclosing each pair."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    return torch.min(x1, x1g), torch.min(y1, y1g), torch.max(x2, x2g), torch.max(y2, y2g)


def giou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Generalized IoU loss (Rezatofighi et al., 2019): 1 - GIoU, per box pair.

    GIoU = IoU - (area(C) - union) / area(C), C the smallest box enclosing both. It
    is in (-1, 1], so the loss is in [0, 2), and it still has a gradient when the boxes
    do not overlap. Symmetric in its arguments.

    Args:
        boxes1, boxes2: (N, 4) or (4,) XYXY boxes; boxes1 must have x2 >= x1, y2 >= y1.
        reduction: "none", "mean" or "sum".
        eps: added to the union and to area(C) against division by zero.

    Returns:
        (N,) or scalar loss (reduced as asked).
    """
    _check_reduction(reduction, "giou_loss")
    _check_boxes(*boxes1.unbind(dim=-1), "giou_loss")
    intsct, union = _intersection_union(boxes1, boxes2, 0.0)
    iou = intsct / (union + eps)
    xc1, yc1, xc2, yc2 = _enclosing_corners(boxes1, boxes2)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    giou = iou - ((area_c - union) / (area_c + eps))
    return _reduce(1 - giou, reduction)


def _center_distance_terms(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Squared centre distance and squared diagonal of the enclosing box (+ eps)."""
    xc1, yc1, xc2, yc2 = _enclosing_corners(boxes1, boxes2)
    diag_len = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    x_p = (x2 + x1) / 2
    y_p = (y2 + y1) / 2
    x_g = (x1g + x2g) / 2
    y_g = (y1g + y2g) / 2
    distance = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
    return distance, diag_len


def diou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Distance IoU loss (Zheng et al., 2019): 1 - IoU + d**2 / c**2, per box pair.

    d is the distance between the box centres and c the diagonal of the smallest box
    enclosing both.

    Args:
        boxes1, boxes2: (N, 4) or (4,) XYXY boxes; boxes1 must have x2 >= x1, y2 >= y1.
        reduction: "none", "mean" or "sum".
        eps: added to the union and to c**2 against division by zero.
    """
    _check_reduction(reduction, "diou_loss")
    _check_boxes(*boxes1.unbind(dim=-1), "diou_loss")
    intsct, union = _intersection_union(boxes1, boxes2, eps)
    iou = intsct / union
    distance, diag_len = _center_distance_terms(boxes1, boxes2, eps)
    return _reduce(1 - iou + (distance / diag_len), reduction)


def ciou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Complete IoU loss (Zheng et al., 2019): the DIoU loss plus an aspect-ratio term.

    Adds alpha * v, with v = 4 / pi**2 * (atan(w2 / h2) - atan(w1 / h1))**2 and
    alpha = v / (1 - IoU + v + eps) treated as a constant (no gradient).

    Args:
        boxes1, boxes2: (N, 4) or (4,) XYXY boxes; boxes1 must have x2 >= x1, y2 >= y1.
        reduction: "none", "mean" or "sum".
        eps: added to the union, to c**2 and to alpha's denominator.
    """
    _check_reduction(reduction, "ciou_loss")
    _check_boxes(*boxes1.unbind(dim=-1), "ciou_loss")
    intsct, union = _intersection_union(boxes1, boxes2, eps)
    iou = intsct / union
    distance, diag_len = _center_distance_terms(boxes1, boxes2, eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    w_pred, h_pred = x2 - x1, y2 - y1
    w_gt, h_gt = x2g - x1g, y2g - y1g
    v = (4 / (math.pi**2)) * torch.pow(torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(1 - iou + (distance / diag_len) + alpha * v, reduction)


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> Tensor:
    """Focal loss (Lin et al., 2017, RetinaNet) on sigmoid logits, elementwise.

    BCE-with-logits scaled by (1 - p_t)**gamma, p_t the predicted probability of the
    true label, and by alpha_t = alpha (positives) or 1 - alpha (negatives) when
    alpha >= 0. Computed in float32.

    Args:
        inputs: logits of any shape.
        targets: same shape, 1 for positives and 0 for negatives (soft values allowed).
        alpha: positive-class weight in [0, 1]; negative (e.g. -1) disables weighting.
        gamma: focusing exponent; 0 gives (weighted) BCE.
        reduction: "none", "mean" or "sum".
    """
    _check_reduction(reduction, "sigmoid_focal_loss")
    inputs = inputs.float()
    targets = targets.float()
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# fvcore's scripted variant; the eager function serves the same callers.
sigmoid_focal_loss_jit = sigmoid_focal_loss


def sigmoid_focal_loss_star(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = -1,
    gamma: float = 1,
    reduction: str = "none",
) -> Tensor:
    """FL* from the RetinaNet paper's appendix: -log(sigmoid(gamma * x_t)) / gamma.

    x_t = x for positives and -x for negatives. gamma = 1 gives BCE-with-logits.
    Computed in float32.

    Args:
        inputs: logits of any shape.
        targets: same shape, 1 for positives and 0 for negatives.
        alpha: positive-class weight in [0, 1]; negative (default) disables weighting.
        gamma: sharpness, > 0.
        reduction: "none", "mean" or "sum".
    """
    _check_reduction(reduction, "sigmoid_focal_loss_star")
    inputs = inputs.float()
    targets = targets.float()
    shifted_inputs = gamma * (inputs * (2 * targets - 1))
    loss = -(F.logsigmoid(shifted_inputs)) / gamma
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = loss * alpha_t
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
