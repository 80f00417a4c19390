"""Non-maximum suppression: axis-aligned through torchvision, rotated in pure PyTorch.

Shapes:
    N: number of boxes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops
from torchvision.ops import nms

from heron.structures.rotated_boxes import pairwise_iou_rotated

__all__ = ["batched_nms", "batched_nms_rotated", "dense_per_class_nms", "nms", "nms_rotated"]

# Sorted boxes handled together by nms_rotated: each block is compared with the boxes kept
# so far in one IoU call, then resolved greedily inside.
_NMS_BLOCK = 256


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Run NMS separately per category, through `torchvision.ops.batched_nms`.

    As Detectron2, boxes are cast to float32 first: float16 lacks the range for the
    per-category coordinate offsets torchvision may use.

    Args:
        boxes: (N, 4) boxes, XYXY absolute pixels.
        scores: (N,) scores.
        idxs: (N,) int64 category of each box; boxes of different categories never
            suppress each other.
        iou_threshold: boxes with IoU > iou_threshold with a kept, higher-scoring box of
            the same category are discarded.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms: boxes must be (N, 4), got shape {tuple(boxes.shape)}")
    boxes = boxes.float()
    if scores.dtype != boxes.dtype:  # torchvision requires one dtype (e.g. float64 scores)
        scores = scores.to(boxes.dtype)
    if torch.compiler.is_exporting():
        return _batched_nms_by_offsets(boxes, scores, idxs, iou_threshold)
    return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)


def _batched_nms_by_offsets(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float
) -> Tensor:
    """Per-category NMS as one `nms` call, boxes of category c shifted by c * (max + 1).

    torchvision's `batched_nms` branches on the number of boxes, which torch.export cannot
    capture when that number depends on the data. The shift makes boxes of different
    categories disjoint whenever coordinates are >= 0 (as detections' are), so one NMS
    suppresses within categories only; the maximum includes 0 so that an empty input
    needs no branch either.
    """
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


class _DensePerClassNMS(torch.autograd.Function):
    """Per-class NMS of dense (C, R) candidates; exported as one ONNX NonMaxSuppression.

    The ONNX operator runs NMS per (batch, class) pair; with the C classes as its batch
    dimension, each class's R boxes are compared only with each other, instead of one NMS
    over all C * R boxes shifted apart by class (torchvision's `batched_nms` as traced),
    which onnxruntime runs in time quadratic in C * R.
    """

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, score_thresh: float, iou_thresh: float):
        candidates = scores > score_thresh
        classes, regions = candidates.nonzero().unbind(1)
        keep = batched_nms(boxes[classes, regions], scores[classes, regions], classes, iou_thresh)
        # the operator's order: by class, then by decreasing score
        keep = keep[torch.sort(classes[keep], stable=True).indices]
        return torch.stack([classes[keep], torch.zeros_like(keep), regions[keep]], dim=1)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, score_thresh: float, iou_thresh: float):
        def constant(value: Any, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        scores = g.op("Unsqueeze", scores, constant(1, torch.int64))  # (C, 1, R)
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            constant(2**31 - 1, torch.int64),  # max_output_boxes_per_class: no limit
            constant(iou_thresh, torch.float32),
            constant(score_thresh, torch.float32),
        )


def dense_per_class_nms(
    boxes: Tensor, scores: Tensor, score_thresh: float, iou_thresh: float
) -> tuple[Tensor, Tensor]:
    """Score threshold and NMS within each class of dense per-class candidates.

    Equivalent to thresholding, then `batched_nms` with the class as category; while
    exporting to ONNX it becomes one NonMaxSuppression operator run per class (see
    `_DensePerClassNMS`).

    Args:
        boxes: (C, R, 4) XYXY boxes, R candidates for each of C classes.
        scores: (C, R) scores.
        score_thresh: candidates scoring strictly above this take part.
        iou_thresh: a box is suppressed by a higher-scoring box of its class with IoU above
            this.

    Returns:
        (class, region) int64 index tensors (K,) of the kept candidates, grouped by class,
        by decreasing score within a class.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2]:
        raise ValueError(
            "dense_per_class_nms: need boxes (C, R, 4) and scores (C, R), got "
            f"{tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    selected = _DensePerClassNMS.apply(boxes.float(), scores.float(), score_thresh, iou_thresh)
    return selected[:, 0], selected[:, 2]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression of rotated boxes by their exact IoU.

    Boxes are visited by decreasing score; a box is discarded when its IoU with a kept,
    higher-scoring box is > iou_threshold (the rule of Detectron2's CUDA kernel and of
    torchvision's `nms`; Detectron2's CPU kernel uses >=). Only the angle's effect on the
    covered region matters: (x, y, w, h, 90) and (x, y, w, h, -90) have IoU 1. Equal
    scores keep their input order.

    Work is blockwise: each block of sorted boxes is first compared with the boxes kept so
    far, then the survivors are resolved among themselves.

    Args:
        boxes: (N, 5) rotated boxes (cx, cy, w, h, angle in degrees).
        scores: (N,) scores.
        iou_threshold: suppression threshold in [0, 1].

    Returns:
        (K,) int64 indices into `boxes` of the kept boxes, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 5:
        raise ValueError(f"nms_rotated: boxes must be (N, 5), got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"nms_rotated: scores must be ({boxes.shape[0]},) to match boxes, "
            f"got shape {tuple(scores.shape)}"
        )
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    kept_boxes = sorted_boxes[:0]
    kept_positions = []  # positions in the sorted order
    for start in range(0, sorted_boxes.shape[0], _NMS_BLOCK):
        block = sorted_boxes[start : start + _NMS_BLOCK]
        if kept_boxes.shape[0] > 0:
            overlaps = pairwise_iou_rotated(kept_boxes, block) > iou_threshold
            survivors = torch.nonzero(~overlaps.any(dim=0)).squeeze(1)
        else:
            survivors = torch.arange(block.shape[0], device=block.device)
        if survivors.numel() == 0:
            continue
        candidates = block[survivors]
        suppresses = pairwise_iou_rotated(candidates, candidates) > iou_threshold
        winners = survivors[_greedy_keep(torch.triu(suppresses, diagonal=1))]
        kept_boxes = torch.cat((kept_boxes, block[winners]), dim=0)
        kept_positions.append(winners + start)
    if not kept_positions:  # unreachable for N > 0: the best box is always kept
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return order[torch.cat(kept_positions)]


def _greedy_keep(suppresses: Tensor) -> Tensor:
    """Resolve a block greedily: (K, K) bool, [i, j] = i (earlier) suppresses j -> kept indices.

    The block is small (at most `_NMS_BLOCK` boxes), so the sequential part runs on the
    host over a copy, looping once per box and doing work only for kept ones.
    """
    matrix = suppresses.cpu().numpy()
    removed = np.zeros(matrix.shape[0], dtype=bool)
    keep = []
    for i in range(matrix.shape[0]):
        if not removed[i]:
            keep.append(i)
            removed |= matrix[i]
    return torch.as_tensor(keep, dtype=torch.int64, device=suppresses.device)


def batched_nms_rotated(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float
) -> Tensor:
    """Run rotated NMS separately per category.

    As Detectron2, each category's boxes are moved by the same offset along x and y,
    idx * (max_coordinate - min_coordinate + 1), where max_coordinate is the largest
    max(cx, cy) + max(w, h) / 2 and min_coordinate the smallest min(cx, cy) - max(w, h) / 2
    over all boxes; then a single `nms_rotated` call sees categories far apart. Using the
    minimum too keeps this correct for negative coordinates.

    Args:
        boxes: (N, 5) rotated boxes (cx, cy, w, h, angle in degrees).
        scores: (N,) scores.
        idxs: (N,) int64 category of each box.
        iou_threshold: suppression threshold, as in `nms_rotated`.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 5:
        raise ValueError(
            f"batched_nms_rotated: boxes must be (N, 5), got shape {tuple(boxes.shape)}"
        )
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(
            f"batched_nms_rotated: idxs must be ({boxes.shape[0]},) to match boxes, "
            f"got shape {tuple(idxs.shape)}"
        )
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()  # float16 lacks the range for the offsets
    max_side = torch.max(boxes[:, 2], boxes[:, 3])
    max_coordinate = (torch.max(boxes[:, 0], boxes[:, 1]) + max_side / 2).max()
    min_coordinate = (torch.min(boxes[:, 0], boxes[:, 1]) - max_side / 2).min()
    offsets = idxs.to(boxes) * (max_coordinate - min_coordinate + 1)
    boxes_for_nms = boxes.clone()
    boxes_for_nms[:, :2] += offsets[:, None]
    return nms_rotated(boxes_for_nms, scores, iou_threshold)
