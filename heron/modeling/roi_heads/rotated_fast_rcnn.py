"""Rotated Fast R-CNN (Detectron2's ``roi_heads/rotated_fast_rcnn.py``): the box branch of
`StandardROIHeads` on rotated proposals, with rotated box coding, IoU and NMS.

Boxes are (cx, cy, w, h, angle in degrees, counter-clockwise), as `RotatedBoxes`.

Shapes:
    R: regions of one image; K: foreground classes; C: box sets (K, or 1 when
    class-agnostic); D: detections kept.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from heron.config.config import CfgNode, configurable
from heron.layers.nms import batched_nms_rotated
from heron.layers.roi_align_rotated import ROIAlignRotated
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.box_regression import Box2BoxTransformRotated
from heron.modeling.poolers import ROIPooler
from heron.modeling.roi_heads.box_head import build_box_head
from heron.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from heron.modeling.roi_heads.fast_rcnn_inference import per_image_inference, threshold_nms_topk
from heron.modeling.roi_heads.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from heron.structures.instances import Instances
from heron.structures.rotated_boxes import RotatedBoxes, pairwise_iou

__all__ = [
    "RROIHeads",
    "RotatedFastRCNNOutputLayers",
    "fast_rcnn_inference_rotated",
    "fast_rcnn_inference_single_image_rotated",
]

_BOX_DIM = 5


def fast_rcnn_inference_rotated(
    boxes: list[Tensor] | tuple[Tensor, ...],
    scores: list[Tensor] | tuple[Tensor, ...],
    image_shapes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[list[Instances], list[Tensor]]:
    """Rotated detections for every image: see `fast_rcnn_inference_single_image_rotated`.

    Returns:
        instances: per image, ``pred_boxes`` (`RotatedBoxes`), ``scores``, ``pred_classes``.
        kept_indices: per image, (D,) int64 index of the region each detection came from.
    """
    return per_image_inference(
        fast_rcnn_inference_single_image_rotated,
        boxes,
        scores,
        image_shapes,
        score_thresh,
        nms_thresh,
        topk_per_image,
    )


def fast_rcnn_inference_single_image_rotated(
    boxes: Tensor,
    scores: Tensor,
    image_shape: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[Instances, Tensor]:
    """Clip, score threshold, per-class rotated NMS and top-k for one image.

    As Detectron2: regions with a non-finite box or score are dropped; boxes are clipped
    with `RotatedBoxes.clip` (only nearly horizontal ones change; all angles are
    normalized to [-180, 180)).

    Args:
        boxes: (R, C*5) predicted rotated boxes, pixels of the network input.
        scores: (R, K + 1) class probabilities, last column background.
        image_shape: (h, w) to clip boxes to.
        score_thresh: keep (region, class) pairs scoring strictly above this.
        nms_thresh: rotated-IoU threshold of the class-wise NMS.
        topk_per_image: keep this many detections (< 0: all).

    Returns:
        Instances sorted by decreasing score, and the (D,) region index of each.
    """
    if boxes.dim() != 2 or boxes.shape[1] % _BOX_DIM != 0:
        raise ValueError(f"boxes must be (R, C*5) rotated boxes, got {tuple(boxes.shape)}")
    if scores.dim() != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must be ({boxes.shape[0]}, K + 1) to match boxes, got {tuple(scores.shape)}"
        )
    # A copy: clip works in place, which autograd refuses on views of split outputs.
    return threshold_nms_topk(
        boxes.clone(),
        scores,
        image_shape,
        score_thresh,
        nms_thresh,
        topk_per_image,
        RotatedBoxes,
        batched_nms_rotated,
    )


class RotatedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """`FastRCNNOutputLayers` for rotated boxes: 5 deltas per box set, rotated inference.

    Takes `FastRCNNOutputLayers`' arguments with a `Box2BoxTransformRotated`.
    """

    _box_coder = Box2BoxTransformRotated
    _inference = staticmethod(fast_rcnn_inference_rotated)

    @configurable
    def __init__(self, input_shape: ShapeSpec | int, **kwargs: Any) -> None:
        super().__init__(input_shape, **kwargs)
        if not isinstance(self.box2box_transform, Box2BoxTransformRotated):
            raise TypeError(
                "RotatedFastRCNNOutputLayers needs box2box_transform=Box2BoxTransformRotated, "
                f"got {type(self.box2box_transform).__name__}"
            )
        if self.box_reg_loss_type != "smooth_l1":
            raise ValueError(
                "rotated boxes support only MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE 'smooth_l1', "
                f"got {self.box_reg_loss_type!r}"
            )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        box_head = cfg.MODEL.ROI_BOX_HEAD
        if len(box_head.BBOX_REG_WEIGHTS) != _BOX_DIM:
            raise ValueError(
                "rotated Fast R-CNN needs 5 values in MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS "
                f"(dx, dy, dw, dh, da), got {tuple(box_head.BBOX_REG_WEIGHTS)}"
            )
        return super().from_config(cfg, input_shape)


@ROI_HEADS_REGISTRY.register()
class RROIHeads(StandardROIHeads):
    """`StandardROIHeads` for rotated proposals: a box branch only (no mask or keypoint
    heads, as Detectron2), pooled by ROIAlignRotated, proposals labelled by rotated IoU."""

    @configurable
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.mask_on or self.keypoint_on:
            raise ValueError("RROIHeads has no mask or keypoint branch")
        if self.train_on_pred_boxes:
            raise ValueError("RROIHeads does not support train_on_pred_boxes")
        if not all(isinstance(p, ROIAlignRotated) for p in self.box_pooler.level_poolers):
            raise ValueError("RROIHeads needs a box_pooler of type 'ROIAlignRotated'")

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        if cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
            raise ValueError(
                "RROIHeads has no mask or keypoint branch: set MODEL.MASK_ON and "
                f"MODEL.KEYPOINT_ON to False, got {cfg.MODEL.MASK_ON} and {cfg.MODEL.KEYPOINT_ON}"
            )
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        head_cfg = cfg.MODEL.ROI_BOX_HEAD
        if head_cfg.POOLER_TYPE != "ROIAlignRotated":
            raise ValueError(
                "RROIHeads needs MODEL.ROI_BOX_HEAD.POOLER_TYPE 'ROIAlignRotated', "
                f"got {head_cfg.POOLER_TYPE!r}"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(
                f"ROI head inputs {in_features} must share a channel count, got {channels}"
            )
        resolution = head_cfg.POOLER_RESOLUTION
        box_pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
            pooler_type=head_cfg.POOLER_TYPE,
        )
        box_head = build_box_head(
            cfg, ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)
        )
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": RotatedFastRCNNOutputLayers(cfg, box_head.output_shape),
        }

    def _match_quality(self, gt_boxes: RotatedBoxes, proposal_boxes: RotatedBoxes) -> Tensor:
        """(G, P) rotated IoU of ground-truth and proposal boxes."""
        if not isinstance(gt_boxes, RotatedBoxes):
            raise TypeError(f"RROIHeads needs RotatedBoxes gt_boxes, got {type(gt_boxes).__name__}")
        return pairwise_iou(gt_boxes, proposal_boxes)
