"""Turning per-region class scores and boxes into final detections.

Shapes:
    R: regions of one image; K: foreground classes; C: box sets (K or 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from heron.layers.nms import batched_nms, dense_per_class_nms
from heron.structures.boxes import Boxes, _is_tracing_or_compiling
from heron.structures.instances import Instances
from heron.structures.rotated_boxes import RotatedBoxes

__all__ = [
    "fast_rcnn_inference",
    "fast_rcnn_inference_single_image",
    "per_image_inference",
    "threshold_nms_topk",
]


def fast_rcnn_inference(
    boxes: list[Tensor] | tuple[Tensor, ...],
    scores: list[Tensor] | tuple[Tensor, ...],
    image_shapes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[list[Instances], list[Tensor]]:
    """Detections for every image: see `fast_rcnn_inference_single_image`.

    Returns:
        instances: per image, ``pred_boxes``, ``scores``, ``pred_classes``.
        kept_indices: per image, (D,) int64 index of the region each detection came from.
    """
    return per_image_inference(
        fast_rcnn_inference_single_image,
        boxes,
        scores,
        image_shapes,
        score_thresh,
        nms_thresh,
        topk_per_image,
    )


def per_image_inference(
    single_image: Callable[..., tuple[Instances, Tensor]],
    boxes: list[Tensor] | tuple[Tensor, ...],
    scores: list[Tensor] | tuple[Tensor, ...],
    image_shapes: list[tuple[int, int]],
    *args: Any,
) -> tuple[list[Instances], list[Tensor]]:
    """`single_image(boxes[i], scores[i], image_shapes[i], *args)` for every image, its
    (instances, kept region indices) pairs split into two lists."""
    results = [single_image(b, s, shape, *args) for b, s, shape in zip(boxes, scores, image_shapes)]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: Tensor,
    scores: Tensor,
    image_shape: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[Instances, Tensor]:
    """Score threshold, per-class NMS and top-k for one image.

    Args:
        boxes: (R, C*4) predicted boxes, XYXY pixels of the network input.
        scores: (R, K + 1) class probabilities, last column background.
        image_shape: (h, w) to clip boxes to.
        score_thresh: keep (region, class) pairs scoring strictly above this.
        nms_thresh: IoU threshold of the class-wise NMS.
        topk_per_image: keep this many detections (< 0: all).

    Returns:
        Instances sorted by decreasing score, and the (D,) region index of each.
    """
    return threshold_nms_topk(
        boxes, scores, image_shape, score_thresh, nms_thresh, topk_per_image, Boxes, batched_nms
    )


def threshold_nms_topk(
    boxes: Tensor,
    scores: Tensor,
    image_shape: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    box_type: Callable[[Tensor], Any],
    nms: Callable[[Tensor, Tensor, Tensor, float], Tensor],
) -> tuple[Instances, Tensor]:
    """The steps both box kinds share: drop non-finite regions, clip (in place) with
    ``box_type(...).clip``, keep (region, class) pairs above `score_thresh`, class-wise
    `nms`, then the top `topk_per_image`.

    Args:
        boxes: (R, C * B) boxes, B the box dimension of `box_type` (4: Boxes,
            5: RotatedBoxes).
        box_type: `Boxes` or `RotatedBoxes`.
        nms: `batched_nms` or `batched_nms_rotated`.
        Others: as `fast_rcnn_inference_single_image`.
    """
    box_dim = 5 if box_type is RotatedBoxes else 4
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if _is_tracing_or_compiling() or not valid.all():  # a graph filters whatever the values
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]  # drop background
    num_box_sets = boxes.shape[1] // box_dim
    clipped = box_type(boxes.reshape(-1, box_dim))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_box_sets, box_dim)  # (R, C, B)

    if box_type is Boxes and torch.onnx.is_in_onnx_export():
        boxes, scores, filter_inds = _dense_nms_topk(
            boxes, scores, score_thresh, nms_thresh, topk_per_image
        )
    else:
        filter_mask = scores > score_thresh  # (R, K)
        filter_inds = filter_mask.nonzero()  # (D0, 2): region, class
        if num_box_sets == 1:
            boxes = boxes[filter_inds[:, 0], 0]
        else:
            boxes = boxes[filter_mask]
        scores = scores[filter_mask]

        keep = nms(boxes, scores, filter_inds[:, 1], nms_thresh)
        if topk_per_image >= 0:
            keep = keep[:topk_per_image]
        boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]

    result = Instances(image_shape)
    result.pred_boxes = box_type(boxes)
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    return result, filter_inds[:, 0]


def _dense_nms_topk(
    boxes: Tensor, scores: Tensor, score_thresh: float, nms_thresh: float, topk_per_image: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The threshold, class-wise NMS and top-k of `threshold_nms_topk` for ONNX graphs.

    One NonMaxSuppression operator per class (`dense_per_class_nms`) instead of one over
    every (region, class) pair: the same detections, in time onnxruntime can afford.

    Args:
        boxes: (R, 1 or K, 4) clipped boxes; scores: (R, K) foreground scores.

    Returns:
        boxes (D, 4), scores (D,) by decreasing score, and (D, 2) (region, class) indices.
    """
    dense = boxes.expand(-1, scores.shape[1], -1)  # (R, K, 4); a view when class-agnostic
    classes, regions = dense_per_class_nms(
        dense.transpose(0, 1), scores.t(), score_thresh, nms_thresh
    )
    kept_scores = scores[regions, classes]
    count = kept_scores.__len__()  # a traced tensor: k follows the image
    if topk_per_image >= 0:
        count = count.clamp(max=topk_per_image)
    order = kept_scores.topk(count).indices
    regions, classes = regions[order], classes[order]
    return dense[regions, classes], kept_scores[order], torch.stack([regions, classes], dim=1)
