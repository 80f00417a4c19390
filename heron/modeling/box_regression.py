"""Box coding: the deltas that turn a reference box (anchor, proposal) into a target box.

Shapes:
    R: number of reference boxes; K: number of box sets predicted per reference box
    (classes, for class-specific regression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from heron.layers.losses import ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from heron.layers.wrappers import cat
from heron.structures.boxes import Boxes

__all__ = [
    "Box2BoxTransform",
    "Box2BoxTransformLinear",
    "Box2BoxTransformRotated",
    "_dense_box_regression_loss",
]

# Largest log-scale change allowed in apply_deltas: a box may grow at most 1000/16 x,
# which keeps exp() finite for wild early-training predictions.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _xyxy_to_cxcywh(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


class Box2BoxTransform:
    """The R-CNN box coding: centre shift in units of box size, log size ratio.

    dx = wx * (tx - sx) / sw,  dy = wy * (ty - sy) / sh,
    dw = ww * log(tw / sw),    dh = wh * log(th / sh),
    for source/target centres (sx, sy)/(tx, ty) and sizes (sw, sh)/(tw, th).
    """

    def __init__(
        self,
        weights: Sequence[float],
        scale_clamp: float = _DEFAULT_SCALE_CLAMP,
    ) -> None:
        """
        Args:
            weights: (wx, wy, ww, wh) scaling of the four deltas.
            scale_clamp: upper bound of dw and dh when decoding.
        """
        if len(weights) != 4:
            raise ValueError(f"Box2BoxTransform needs 4 weights, got {tuple(weights)}")
        self.weights = tuple(weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(R, 4) deltas that turn XYXY ``src_boxes`` (R, 4) into ``target_boxes`` (R, 4)."""
        if not isinstance(src_boxes, Tensor) or not isinstance(target_boxes, Tensor):
            raise TypeError("get_deltas takes tensors; pass Boxes.tensor")
        src_x, src_y, src_w, src_h = _xyxy_to_cxcywh(src_boxes)
        tgt_x, tgt_y, tgt_w, tgt_h = _xyxy_to_cxcywh(target_boxes)
        wx, wy, ww, wh = self.weights
        deltas = torch.stack(
            (
                wx * (tgt_x - src_x) / src_w,
                wy * (tgt_y - src_y) / src_h,
                ww * torch.log(tgt_w / src_w),
                wh * torch.log(tgt_h / src_h),
            ),
            dim=1,
        )
        return deltas

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Decode (R, K*4) ``deltas`` against XYXY ``boxes`` (R, 4) -> (R, K*4) XYXY boxes.

        Decoding runs in float32 even under autocast (as Detectron2).
        """
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        ctr_x, ctr_y, widths, heights = _xyxy_to_cxcywh(boxes)
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


class Box2BoxTransformRotated:
    """Box coding for rotated boxes (cx, cy, w, h, angle in degrees).

    As `Box2BoxTransform` for centre and size; the angle delta is the wrapped difference
    in [-180, 180) degrees, converted to radians and scaled by wa.
    """

    def __init__(
        self,
        weights: Sequence[float],
        scale_clamp: float = _DEFAULT_SCALE_CLAMP,
    ) -> None:
        if len(weights) != 5:
            raise ValueError(f"Box2BoxTransformRotated needs 5 weights, got {tuple(weights)}")
        self.weights = tuple(weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(R, 5) deltas from (R, 5) source boxes to (R, 5) targets."""
        src_x, src_y, src_w, src_h, src_a = torch.unbind(src_boxes, dim=1)
        tgt_x, tgt_y, tgt_w, tgt_h, tgt_a = torch.unbind(target_boxes, dim=1)
        wx, wy, ww, wh, wa = self.weights
        da = (tgt_a - src_a + 180.0) % 360.0 - 180.0
        return torch.stack(
            (
                wx * (tgt_x - src_x) / src_w,
                wy * (tgt_y - src_y) / src_h,
                ww * torch.log(tgt_w / src_w),
                wh * torch.log(tgt_h / src_h),
                wa * da * math.pi / 180.0,
            ),
            dim=1,
        )

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Decode (R, K*5) deltas against (R, 5) boxes -> (R, K*5) boxes, angles in [-180, 180)."""
        if deltas.shape[1] % 5 != 0:
            raise ValueError(f"rotated deltas must have 5*K columns, got {tuple(deltas.shape)}")
        boxes = boxes.to(deltas.dtype).unsqueeze(2)  # (R, 5, 1) broadcasts over K
        ctr_x, ctr_y, widths, heights, angles = (boxes[:, i] for i in range(5))
        wx, wy, ww, wh, wa = self.weights
        dx = deltas[:, 0::5] / wx
        dy = deltas[:, 1::5] / wy
        dw = torch.clamp(deltas[:, 2::5] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::5] / wh, max=self.scale_clamp)
        da = deltas[:, 4::5] / wa

        pred = torch.zeros_like(deltas)
        pred[:, 0::5] = dx * widths + ctr_x
        pred[:, 1::5] = dy * heights + ctr_y
        pred[:, 2::5] = torch.exp(dw) * widths
        pred[:, 3::5] = torch.exp(dh) * heights
        pred_angle = da * 180.0 / math.pi + angles
        pred[:, 4::5] = (pred_angle + 180.0) % 360.0 - 180.0
        return pred


class Box2BoxTransformLinear:
    """FCOS-style coding: distances from the reference box centre to the four sides.

    With ``normalize_by_size`` the distances are divided by the reference box's
    width (left/right) and height (top/bottom).
    """

    def __init__(self, normalize_by_size: bool = True) -> None:
        self.normalize_by_size = normalize_by_size

    def _strides(self, boxes: Tensor) -> Tensor:
        stride_w = boxes[:, 2] - boxes[:, 0]
        stride_h = boxes[:, 3] - boxes[:, 1]
        return torch.stack((stride_w, stride_h, stride_w, stride_h), dim=1)

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(R, 4) (left, top, right, bottom) distances from src centres to target sides."""
        ctr_x = 0.5 * (src_boxes[:, 0] + src_boxes[:, 2])
        ctr_y = 0.5 * (src_boxes[:, 1] + src_boxes[:, 3])
        deltas = torch.stack(
            (
                ctr_x - target_boxes[:, 0],
                ctr_y - target_boxes[:, 1],
                target_boxes[:, 2] - ctr_x,
                target_boxes[:, 3] - ctr_y,
            ),
            dim=1,
        )
        if self.normalize_by_size:
            deltas = deltas / self._strides(src_boxes)
        return deltas

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Decode (R, K*4) distances (negative ones clipped to 0) -> (R, K*4) XYXY boxes."""
        deltas = F.relu(deltas)
        boxes = boxes.to(deltas.dtype)
        ctr_x = 0.5 * (boxes[:, 0] + boxes[:, 2])
        ctr_y = 0.5 * (boxes[:, 1] + boxes[:, 3])
        if self.normalize_by_size:
            deltas = deltas * self._strides(boxes).repeat(1, deltas.shape[1] // 4)
        pred = torch.zeros_like(deltas)
        pred[:, 0::4] = ctr_x[:, None] - deltas[:, 0::4]
        pred[:, 1::4] = ctr_y[:, None] - deltas[:, 1::4]
        pred[:, 2::4] = ctr_x[:, None] + deltas[:, 2::4]
        pred[:, 3::4] = ctr_y[:, None] + deltas[:, 3::4]
        return pred


_IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def _dense_box_regression_loss(
    anchors: list[Boxes | Tensor],
    box2box_transform: Box2BoxTransform | Box2BoxTransformLinear,
    pred_anchor_deltas: list[Tensor],
    gt_boxes: list[Tensor],
    fg_mask: Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> Tensor:
    """Summed box-regression loss over the foreground anchors of dense detectors.

    Args:
        anchors: L per-level anchors, (Ai, 4) each.
        pred_anchor_deltas: L tensors (N, Ai, 4) of predicted deltas.
        gt_boxes: N tensors (sum Ai, 4): each anchor's matched ground-truth box.
        fg_mask: (N, sum Ai) bool, anchors that count.
        box_reg_loss_type: "smooth_l1" (on deltas), or "giou", "diou", "ciou" (on decoded boxes).

    Returns:
        Scalar sum (not normalized; callers divide by their normalizer).
    """
    if isinstance(anchors[0], Boxes):
        anchors = type(anchors[0]).cat(anchors).tensor  # (R, 4)
    else:
        anchors = cat(anchors)
    if box_reg_loss_type == "smooth_l1":
        gt_deltas = [box2box_transform.get_deltas(anchors, k) for k in gt_boxes]
        gt_deltas = torch.stack(gt_deltas)  # (N, R, 4)
        return smooth_l1_loss(
            cat(pred_anchor_deltas, dim=1)[fg_mask],
            gt_deltas[fg_mask],
            beta=smooth_l1_beta,
            reduction="sum",
        )
    if box_reg_loss_type in _IOU_LOSSES:
        pred_boxes = [
            box2box_transform.apply_deltas(k, anchors) for k in cat(pred_anchor_deltas, dim=1)
        ]
        return _IOU_LOSSES[box_reg_loss_type](
            torch.stack(pred_boxes)[fg_mask], torch.stack(gt_boxes)[fg_mask], reduction="sum"
        )
    raise ValueError(
        f"box_reg_loss_type must be one of 'smooth_l1', {', '.join(map(repr, _IOU_LOSSES))}; "
        f"got {box_reg_loss_type!r}"
    )
