"""Selecting proposals from dense predictions, and adding ground truth to them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from heron.layers.nms import batched_nms
from heron.layers.wrappers import cat, move_device_like
from heron.structures.boxes import Boxes, _is_tracing_or_compiling
from heron.structures.instances import Instances

__all__ = ["add_ground_truth_to_proposals", "find_top_rpn_proposals"]


def _top_k_per_level(
    proposals: list[Tensor], logits: list[Tensor], pre_nms_topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``pre_nms_topk`` best-scored proposals of every level and image.

    Returns (N, K, 4) boxes, (N, K) scores and (K,) int64 level ids, levels concatenated.
    """
    num_images = proposals[0].shape[0]
    device = proposals[0].device
    batch_idx = move_device_like(torch.arange(num_images, device=device), proposals[0])
    topk_scores, topk_proposals, level_ids = [], [], []
    for level_id, (proposals_i, logits_i) in enumerate(zip(proposals, logits)):
        num_i = logits_i.shape[1]  # Hi * Wi * A
        k = (
            torch.clamp(num_i, max=pre_nms_topk)
            if isinstance(num_i, Tensor)
            else min(num_i, pre_nms_topk)
        )
        scores_i, idx_i = logits_i.topk(k, dim=1)
        topk_proposals.append(proposals_i[batch_idx[:, None], idx_i])  # (N, k, 4)
        topk_scores.append(scores_i)
        level_ids.append(torch.full((k,), level_id, dtype=torch.int64, device=device))
    return cat(topk_proposals, dim=1), cat(topk_scores, dim=1), cat(level_ids, dim=0)


def find_top_rpn_proposals(
    proposals: list[Tensor],
    pred_objectness_logits: list[Tensor],
    image_sizes: list[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """Per image: top-k per level, clip, drop small boxes, NMS within each level, top-k.

    Args:
        proposals: L tensors (N, Hi*Wi*A, 4) of decoded proposals, input-image pixels.
        pred_objectness_logits: L tensors (N, Hi*Wi*A).
        image_sizes: N (h, w) sizes to clip to.
        nms_thresh: IoU threshold of the per-level NMS.
        pre_nms_topk: proposals kept per level before NMS.
        post_nms_topk: proposals kept per image after NMS.
        min_box_size: boxes with a side not above this (pixels) are dropped.
        training: non-finite predictions raise in training and are dropped in inference.

    Returns:
        N `Instances` with ``proposal_boxes`` and ``objectness_logits``, sorted by
        decreasing logit.
    """
    topk_proposals, topk_scores, level_ids = _top_k_per_level(
        proposals, pred_objectness_logits, pre_nms_topk
    )
    return _select_per_image(
        (topk_proposals, topk_scores, level_ids),
        image_sizes,
        nms_thresh,
        post_nms_topk,
        min_box_size,
        training,
        Boxes,
        batched_nms,
    )


def _select_per_image(
    top_k: tuple[Tensor, Tensor, Tensor],
    image_sizes: list[tuple[int, int]],
    nms_thresh: float,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
    box_type: Callable[[Tensor], Any],
    nms: Callable[[Tensor, Tensor, Tensor, float], Tensor],
) -> list[Instances]:
    """The per-image steps axis-aligned and rotated proposals share: drop non-finite
    proposals (raise in training), clip with ``box_type(...).clip``, drop small boxes,
    NMS per level with `nms`, keep the top `post_nms_topk`.

    Args:
        top_k: `_top_k_per_level`'s (N, K*L, B) proposals, (N, K*L) scores and (K*L,)
            level ids.
        box_type: `Boxes` or `RotatedBoxes`.
        nms: `batched_nms` or `batched_nms_rotated`.
        Others: as `find_top_rpn_proposals`.
    """
    topk_proposals, topk_scores, level_ids = top_k
    results = []
    for n, image_size in enumerate(image_sizes):
        boxes, scores, levels = topk_proposals[n], topk_scores[n], level_ids
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if training:
            if not valid.all():
                raise FloatingPointError(
                    "Predicted boxes or scores contain Inf/NaN. Training has diverged."
                )
        elif _is_tracing_or_compiling() or not valid.all():  # a graph filters in any case
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes = box_type(boxes)
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=min_box_size)
        if _is_tracing_or_compiling() or keep.sum().item() != len(boxes):
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = nms(boxes.tensor, scores, levels, nms_thresh)[:post_nms_topk]
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


# Logit of a probability that is 1 up to float precision: ground-truth boxes added as
# proposals get the highest possible objectness.
_GT_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def add_ground_truth_to_proposals(
    gt: list[Instances] | list[Boxes], proposals: list[Instances]
) -> list[Instances]:
    """Append each image's ground-truth boxes to its proposals (training only).

    Args:
        gt: per image, Instances with ``gt_boxes`` (or plain Boxes).
        proposals: per image, Instances with ``proposal_boxes`` and ``objectness_logits``.
    """
    if gt is None:
        return proposals
    if len(gt) != len(proposals):
        raise ValueError(f"{len(gt)} ground-truth sets for {len(proposals)} proposal sets")
    return [_add_gt_single(gt_i, p_i) for gt_i, p_i in zip(gt, proposals)]


def _add_gt_single(gt: Instances | Boxes, proposals: Instances) -> Instances:
    if isinstance(gt, Boxes):
        gt = Instances(proposals.image_size, gt_boxes=gt)
    device = proposals.objectness_logits.device
    gt_proposal = Instances(proposals.image_size, **gt.get_fields())
    gt_proposal.proposal_boxes = gt.gt_boxes
    gt_proposal.objectness_logits = torch.full((len(gt),), _GT_LOGIT, device=device)
    for key in proposals.get_fields():
        if not gt_proposal.has(key):
            raise ValueError(f"proposals have field {key!r} that the ground truth lacks")
    # Keep only the proposals' fields so the two can be concatenated.
    gt_proposal = Instances(
        proposals.image_size, **{k: gt_proposal.get(k) for k in proposals.get_fields()}
    )
    return Instances.cat([proposals, gt_proposal])
