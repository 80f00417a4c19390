"""Rotated Region Proposal Network (Detectron2's `RRPN`): `RPN` on rotated anchors.

Boxes are (cx, cy, w, h, angle in degrees, counter-clockwise), as `RotatedBoxes`.

Shapes:
    N: images; L: feature levels; Hi, Wi: level i's size; A: anchors per location;
    R = sum(Hi * Wi * A): anchors over all levels; K: proposals kept per level.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from heron.config.config import CfgNode, configurable
from heron.layers.nms import batched_nms_rotated
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.box_regression import Box2BoxTransformRotated
from heron.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from heron.modeling.proposal_generator.proposal_utils import _select_per_image, _top_k_per_level
from heron.modeling.proposal_generator.rpn import RPN
from heron.structures.instances import Instances
from heron.structures.rotated_boxes import RotatedBoxes, pairwise_iou
from heron.utils.memory import retry_if_cuda_oom

__all__ = ["RRPN", "find_top_rrpn_proposals"]


def find_top_rrpn_proposals(
    proposals: list[Tensor],
    pred_objectness_logits: list[Tensor],
    image_sizes: list[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """Per image: top-k per level, clip, drop small boxes, rotated NMS per level, top-k.

    The steps and their order are Detectron2's `find_top_rrpn_proposals`: clipping uses
    `RotatedBoxes.clip` with its default angle threshold (1 degree), so only nearly
    horizontal proposals are clipped, and it normalizes every angle to [-180, 180).

    Args:
        proposals: L tensors (N, Hi*Wi*A, 5) of decoded rotated proposals, input pixels.
        pred_objectness_logits: L tensors (N, Hi*Wi*A).
        image_sizes: N (h, w) sizes to clip to.
        nms_thresh: rotated-IoU threshold of the per-level NMS.
        pre_nms_topk: proposals kept per level before NMS.
        post_nms_topk: proposals kept per image after NMS.
        min_box_size: boxes with a side not above this (pixels) are dropped.
        training: non-finite predictions raise in training and are dropped in inference.

    Returns:
        N `Instances` with ``proposal_boxes`` (`RotatedBoxes`) and ``objectness_logits``,
        sorted by decreasing logit.
    """
    for i, p in enumerate(proposals):
        if p.dim() != 3 or p.shape[-1] != 5:
            raise ValueError(
                f"proposals[{i}] must be (N, Hi*Wi*A, 5) rotated boxes, got {tuple(p.shape)}"
            )
    top_k = _top_k_per_level(proposals, pred_objectness_logits, pre_nms_topk)
    return _select_per_image(
        top_k,
        image_sizes,
        nms_thresh,
        post_nms_topk,
        min_box_size,
        training,
        RotatedBoxes,
        batched_nms_rotated,
    )


@PROPOSAL_GENERATOR_REGISTRY.register()
class RRPN(RPN):
    """Rotated RPN: rotated anchors matched by rotated IoU, rotated box coding and NMS.

    Takes `RPN`'s arguments, with a `RotatedAnchorGenerator`, a `Box2BoxTransformRotated`
    and ``anchor_boundary_thresh < 0`` (Detectron2 has no boundary filter for rotated
    anchors).
    """

    @configurable
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.anchor_boundary_thresh >= 0:
            raise ValueError(
                "RRPN has no anchor boundary filter: MODEL.RPN.BOUNDARY_THRESH "
                f"(anchor_boundary_thresh) must be < 0, got {self.anchor_boundary_thresh}"
            )
        if not isinstance(self.box2box_transform, Box2BoxTransformRotated):
            raise TypeError(
                "RRPN needs box2box_transform=Box2BoxTransformRotated, got "
                f"{type(self.box2box_transform).__name__}"
            )
        if getattr(self.anchor_generator, "box_dim", None) != 5:
            raise ValueError(
                "RRPN needs rotated anchors (box_dim 5, MODEL.ANCHOR_GENERATOR.NAME "
                f"'RotatedAnchorGenerator'), got {type(self.anchor_generator).__name__}"
            )

    _box_coder = Box2BoxTransformRotated
    _find_top_proposals = staticmethod(find_top_rrpn_proposals)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        rpn = cfg.MODEL.RPN
        if len(rpn.BBOX_REG_WEIGHTS) != 5:
            raise ValueError(
                "RRPN needs 5 values in MODEL.RPN.BBOX_REG_WEIGHTS (dx, dy, dw, dh, da), "
                f"got {tuple(rpn.BBOX_REG_WEIGHTS)}"
            )
        return super().from_config(cfg, input_shape)  # with _box_coder rotated

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: list[RotatedBoxes], gt_instances: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Label anchors by rotated IoU with the ground truth and sample them.

        Args:
            anchors: L `RotatedBoxes`, the anchors of each level.
            gt_instances: N `Instances` with rotated ``gt_boxes``.

        Returns:
            Per image, (R,) int8 labels (1 object, 0 background, -1 ignored) and (R, 5)
            matched ground-truth boxes (zeros where an image has no ground truth;
            meaningful only where the label is 1).
        """
        anchors = RotatedBoxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            gt_boxes = instances.gt_boxes
            if not isinstance(gt_boxes, RotatedBoxes):
                raise TypeError(f"RRPN needs RotatedBoxes gt_boxes, got {type(gt_boxes).__name__}")
            iou = retry_if_cuda_oom(pairwise_iou)(gt_boxes, anchors)  # (G, R)
            matched_idxs, labels = retry_if_cuda_oom(self.anchor_matcher)(iou)
            labels = labels.to(device=gt_boxes.device)
            del iou
            labels = self._subsample_labels(labels)
            if len(gt_boxes) == 0:
                matched = torch.zeros_like(anchors.tensor)  # unused: all background
            else:
                matched = gt_boxes[matched_idxs].tensor
            gt_labels.append(labels)
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes
