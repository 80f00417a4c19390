"""ROI heads: per-region box, mask and keypoint prediction on top of proposals.

`ROIHeads` holds the training-time proposal sampling; `StandardROIHeads` runs separate
box/mask/keypoint heads on pooled features (FPN models); `Res5ROIHeads` shares ResNet's
res5 stage between the box and mask branches (C4 models).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from heron.config.config import CfgNode, configurable
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import nonzero_tuple
from heron.modeling.backbone.resnet import BottleneckBlock, ResNet
from heron.modeling.matcher import Matcher
from heron.modeling.poolers import ROIPooler
from heron.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from heron.modeling.roi_heads.box_head import build_box_head
from heron.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from heron.modeling.roi_heads.keypoint_head import build_keypoint_head
from heron.modeling.roi_heads.mask_head import build_mask_head
from heron.modeling.sampling import subsample_labels
from heron.structures.boxes import Boxes, pairwise_iou
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage
from heron.utils.registry import Registry

__all__ = [
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "Res5ROIHeads",
    "StandardROIHeads",
    "build_roi_heads",
    "select_foreground_proposals",
    "select_proposals_with_visible_keypoints",
]

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
Registry for ROI heads, called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``.
"""


def build_roi_heads(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The ROI heads named by ``cfg.MODEL.ROI_HEADS.NAME``."""
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, input_shape)


def select_foreground_proposals(
    proposals: list[Instances], bg_label: int
) -> tuple[list[Instances], list[Tensor]]:
    """Keep the regions whose gt_classes are foreground (not -1, not ``bg_label``).

    Returns the kept regions per image and the (Ri,) bool selection masks.
    """
    if (
        not isinstance(proposals, list | tuple)
        or not proposals
        or not proposals[0].has("gt_classes")
    ):
        raise ValueError("select_foreground_proposals needs a list of Instances with gt_classes")
    fg_proposals, masks = [], []
    for per_image in proposals:
        gt_classes = per_image.gt_classes
        mask = (gt_classes != -1) & (gt_classes != bg_label)
        fg_proposals.append(per_image[mask.nonzero().squeeze(1)])
        masks.append(mask)
    return fg_proposals, masks


def select_proposals_with_visible_keypoints(proposals: list[Instances]) -> list[Instances]:
    """Keep the regions whose box contains at least one visible gt keypoint."""
    selected, counts = [], []
    for per_image in proposals:
        if len(per_image) == 0:
            selected.append(per_image)
            continue
        keypoints = per_image.gt_keypoints.tensor  # (R, K, 3)
        visible = keypoints[:, :, 2] >= 1
        xs, ys = keypoints[:, :, 0], keypoints[:, :, 1]
        boxes = per_image.proposal_boxes.tensor.unsqueeze(dim=1)  # (R, 1, 4)
        inside = (
            (xs >= boxes[:, :, 0])
            & (xs <= boxes[:, :, 2])
            & (ys >= boxes[:, :, 1])
            & (ys <= boxes[:, :, 3])
        )
        idxs = nonzero_tuple((inside & visible).any(dim=1))[0]
        counts.append(idxs.numel())
        selected.append(per_image[idxs])
    storage = try_get_event_storage()
    if storage is not None and counts:
        storage.put_scalar("keypoint_head/num_fg_samples", float(np.mean(counts)))
    return selected


class ROIHeads(nn.Module, metaclass=ABCMeta):
    """Base of ROI heads: matches proposals to ground truth and samples them in training."""

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
    ) -> None:
        """
        Args:
            num_classes: K foreground classes (background is label K).
            batch_size_per_image: regions sampled per image for the losses.
            positive_fraction: wanted fraction of foreground among them.
            proposal_matcher: labels proposals by IoU with ground truth.
            proposal_append_gt: add ground-truth boxes to the proposals in training.
        """
        super().__init__()
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.num_classes = num_classes
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt

    @classmethod
    def from_config(
        cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec] | None = None
    ) -> dict[str, Any]:
        heads = cfg.MODEL.ROI_HEADS
        return {
            "batch_size_per_image": heads.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": heads.POSITIVE_FRACTION,
            "num_classes": heads.NUM_CLASSES,
            "proposal_append_gt": heads.PROPOSAL_APPEND_GT,
            "proposal_matcher": Matcher(
                heads.IOU_THRESHOLDS, heads.IOU_LABELS, allow_low_quality_matches=False
            ),
        }

    def _sample_proposals(
        self, matched_idxs: Tensor, matched_labels: Tensor, gt_classes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Sample regions and give each its class (K for background, -1 ignored).

        Returns (S,) indices into the proposals and their (S,) gt classes.
        """
        if gt_classes.numel() > 0:
            gt_classes = gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
        else:
            gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
        fg_idxs, bg_idxs = subsample_labels(
            gt_classes, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        sampled = torch.cat([fg_idxs, bg_idxs], dim=0)
        return sampled, gt_classes[sampled]

    def _match_quality(self, gt_boxes: Boxes, proposal_boxes: Boxes) -> Tensor:
        """(G, P) IoU of ground-truth and proposal boxes, what the proposal matcher uses."""
        return pairwise_iou(gt_boxes, proposal_boxes)

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances]
    ) -> list[Instances]:
        """Sampled training regions with ``gt_classes`` and the other ``gt_*`` fields of
        their matched ground truth (none when the image has no ground truth)."""
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        sampled_proposals, num_fg, num_bg = [], [], []
        for per_image, targets_per_image in zip(proposals, targets):
            iou = self._match_quality(targets_per_image.gt_boxes, per_image.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            sampled_idxs, gt_classes = self._sample_proposals(
                matched_idxs, matched_labels, targets_per_image.gt_classes
            )
            per_image = per_image[sampled_idxs]
            per_image.gt_classes = gt_classes
            if len(targets_per_image) > 0:
                sampled_targets = matched_idxs[sampled_idxs]
                for name, value in targets_per_image.get_fields().items():
                    if name.startswith("gt_") and not per_image.has(name):
                        per_image.set(name, value[sampled_targets])
            num_bg.append(int((gt_classes == self.num_classes).sum()))
            num_fg.append(gt_classes.numel() - num_bg[-1])
            sampled_proposals.append(per_image)
        storage = try_get_event_storage()
        if storage is not None:
            storage.put_scalar("roi_head/num_fg_samples", float(np.mean(num_fg)))
            storage.put_scalar("roi_head/num_bg_samples", float(np.mean(num_bg)))
        return sampled_proposals

    def _sample_training_proposals(
        self, proposals: list[Instances], targets: list[Instances] | None
    ) -> list[Instances]:
        if targets is None:
            raise ValueError("ROI heads need targets in training mode")
        return self.label_and_sample_proposals(proposals, targets)

    @abstractmethod
    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Inference: (detections, {}); training: (sampled proposals or [], losses)."""


def _build_pooler(
    head_cfg: CfgNode, input_shape: dict[str, ShapeSpec], in_features: list[str]
) -> ROIPooler:
    """The ROIPooler a head's config section (ROI_BOX_HEAD, ROI_MASK_HEAD, ...) describes."""
    return ROIPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[k].stride for k in in_features),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
    )


def _shared_channels(input_shape: dict[str, ShapeSpec], in_features: list[str]) -> int:
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        raise ValueError(
            f"ROI head inputs {in_features} must share a channel count, got {channels}"
        )
    return channels.pop()


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(ROIHeads):
    """C4 heads: pool from one feature map, run ResNet's res5 on the regions, then the box
    predictor on their average and the mask head on the res5 output."""

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        pooler: ROIPooler,
        res5: nn.Module,
        box_predictor: nn.Module,
        mask_head: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.in_features = list(in_features)
        self.pooler = pooler
        if isinstance(res5, list | tuple):
            res5 = nn.Sequential(*res5)
        self.res5 = res5
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        ret = super().from_config(cfg)
        in_features = ret["in_features"] = cfg.MODEL.ROI_HEADS.IN_FEATURES
        if len(in_features) != 1:
            raise ValueError(f"Res5ROIHeads takes one input feature, got {in_features}")
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("Res5ROIHeads has no keypoint branch; set MODEL.KEYPOINT_ON False")
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        ret["pooler"] = _build_pooler(cfg.MODEL.ROI_BOX_HEAD, input_shape, in_features)
        ret["res5"], out_channels = cls._build_res5_block(cfg)
        ret["box_predictor"] = FastRCNNOutputLayers(
            cfg, ShapeSpec(channels=out_channels, height=1, width=1)
        )
        if cfg.MODEL.MASK_ON:
            ret["mask_head"] = build_mask_head(
                cfg, ShapeSpec(channels=out_channels, width=resolution, height=resolution)
            )
        return ret

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode) -> tuple[nn.Sequential, int]:
        """ResNet's res5 stage (3 bottleneck blocks, first with stride 2)."""
        r = cfg.MODEL.RESNETS
        factor = 2**3  # res5's width relative to res2's
        if r.DEFORM_ON_PER_STAGE[-1]:
            raise ValueError(
                "Deformable conv is not supported in Res5ROIHeads (res5 of a C4 model)"
            )
        out_channels = r.RES2_OUT_CHANNELS * factor
        blocks = ResNet.make_stage(
            BottleneckBlock,
            3,
            stride_per_block=[2, 1, 1],
            in_channels=out_channels // 2,
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * factor,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
        return nn.Sequential(*blocks), out_channels

    def _shared_roi_transform(self, features: list[Tensor], boxes: list[Boxes]) -> Tensor:
        return self.res5(self.pooler(features, boxes))

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        if self.training:
            proposals = self._sample_training_proposals(proposals, targets)
        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.mask_on:
                proposals, fg_masks = select_foreground_proposals(proposals, self.num_classes)
                # The mask head reuses the res5 features of the foreground regions.
                losses.update(self.mask_head(box_features[torch.cat(fg_masks, dim=0)], proposals))
            return [], losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(
        self, features: dict[str, Tensor], instances: list[Instances]
    ) -> list[Instances]:
        """Add masks to detections that have ``pred_boxes`` and ``pred_classes``."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference only")
        if not self.mask_on:
            return instances
        x = self._shared_roi_transform(
            [features[f] for f in self.in_features], [x.pred_boxes for x in instances]
        )
        return self.mask_head(x, instances)


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads(ROIHeads):
    """Separate box, mask and keypoint branches, each with its own pooler and head."""

    @configurable
    def __init__(
        self,
        *,
        box_in_features: list[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_in_features: list[str] | None = None,
        mask_pooler: ROIPooler | None = None,
        mask_head: nn.Module | None = None,
        keypoint_in_features: list[str] | None = None,
        keypoint_pooler: ROIPooler | None = None,
        keypoint_head: nn.Module | None = None,
        train_on_pred_boxes: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            box_in_features, box_pooler, box_head, box_predictor: the box branch.
            mask_*: the mask branch (None: no masks). A None pooler hands the head the
                feature dict itself.
            keypoint_*: the keypoint branch (None: no keypoints).
            train_on_pred_boxes: train mask/keypoint branches on the box branch's refined
                boxes instead of the proposals.
            kwargs: `ROIHeads` arguments.
        """
        super().__init__(**kwargs)
        self.in_features = self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_on = mask_in_features is not None
        if self.mask_on:
            self.mask_in_features = list(mask_in_features)
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head
        self.keypoint_on = keypoint_in_features is not None
        if self.keypoint_on:
            self.keypoint_in_features = list(keypoint_in_features)
            self.keypoint_pooler = keypoint_pooler
            self.keypoint_head = keypoint_head
        self.train_on_pred_boxes = train_on_pred_boxes

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        ret = super().from_config(cfg)
        ret["train_on_pred_boxes"] = cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES
        ret.update(cls._init_box_head(cfg, input_shape))
        ret.update(cls._init_mask_head(cfg, input_shape))
        ret.update(cls._init_keypoint_head(cfg, input_shape))
        return ret

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        box_head = build_box_head(
            cfg,
            ShapeSpec(
                channels=_shared_channels(input_shape, in_features),
                height=resolution,
                width=resolution,
            ),
        )
        return {
            "box_in_features": in_features,
            "box_pooler": _build_pooler(cfg.MODEL.ROI_BOX_HEAD, input_shape, in_features),
            "box_head": box_head,
            "box_predictor": FastRCNNOutputLayers(cfg, box_head.output_shape),
        }

    @classmethod
    def _init_branch(
        cls,
        cfg: CfgNode,
        input_shape: dict[str, ShapeSpec],
        head_cfg: CfgNode,
        prefix: str,
        build: Any,
    ) -> dict[str, Any]:
        """Pooler and head of the mask or keypoint branch (``prefix`` "mask"/"keypoint")."""
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = head_cfg.POOLER_RESOLUTION
        pooler_type = head_cfg.POOLER_TYPE
        ret: dict[str, Any] = {f"{prefix}_in_features": in_features}
        if pooler_type:
            ret[f"{prefix}_pooler"] = _build_pooler(head_cfg, input_shape, in_features)
            shape = ShapeSpec(
                channels=_shared_channels(input_shape, in_features),
                width=resolution,
                height=resolution,
            )
        else:
            ret[f"{prefix}_pooler"] = None
            shape = {f: input_shape[f] for f in in_features}
        ret[f"{prefix}_head"] = build(cfg, shape)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        if not cfg.MODEL.MASK_ON:
            return {}
        return cls._init_branch(cfg, input_shape, cfg.MODEL.ROI_MASK_HEAD, "mask", build_mask_head)

    @classmethod
    def _init_keypoint_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        if not cfg.MODEL.KEYPOINT_ON:
            return {}
        return cls._init_branch(
            cfg, input_shape, cfg.MODEL.ROI_KEYPOINT_HEAD, "keypoint", build_keypoint_head
        )

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Training: (sampled proposals, losses). Inference: (detections, {})."""
        if self.training:
            proposals = self._sample_training_proposals(proposals, targets)
            losses = self._forward_box(features, proposals)
            # Mask and keypoint branches train on the sampled proposals (or, with
            # train_on_pred_boxes, on the boxes _forward_box just refined in place).
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(
        self, features: dict[str, Tensor], instances: list[Instances]
    ) -> list[Instances]:
        """Add masks and keypoints to detections with ``pred_boxes`` and ``pred_classes``."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference only")
        if not (instances[0].has("pred_boxes") and instances[0].has("pred_classes")):
            raise ValueError("forward_with_given_boxes needs pred_boxes and pred_classes")
        instances = self._forward_mask(features, instances)
        return self._forward_keypoint(features, instances)

    def _forward_box(
        self, features: dict[str, Tensor], proposals: list[Instances]
    ) -> dict[str, Tensor] | list[Instances]:
        """Training: box losses. Inference: detections after score filter and NMS."""
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features
        if not self.training:
            pred_instances, _ = self.box_predictor.inference(predictions, proposals)
            return pred_instances
        losses = self.box_predictor.losses(predictions, proposals)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for per_image, boxes in zip(proposals, pred_boxes):
                    per_image.proposal_boxes = Boxes(boxes)
        return losses

    def _run_branch(
        self,
        features: dict[str, Tensor],
        instances: list[Instances],
        in_features: list[str],
        pooler: ROIPooler | None,
    ) -> Tensor | dict[str, Tensor]:
        if pooler is None:
            return {f: features[f] for f in in_features}
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        return pooler([features[f] for f in in_features], boxes)

    def _forward_mask(
        self, features: dict[str, Tensor], instances: list[Instances]
    ) -> dict[str, Tensor] | list[Instances]:
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        x = self._run_branch(features, instances, self.mask_in_features, self.mask_pooler)
        return self.mask_head(x, instances)

    def _forward_keypoint(
        self, features: dict[str, Tensor], instances: list[Instances]
    ) -> dict[str, Tensor] | list[Instances]:
        if not self.keypoint_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = select_proposals_with_visible_keypoints(instances)
        x = self._run_branch(features, instances, self.keypoint_in_features, self.keypoint_pooler)
        return self.keypoint_head(x, instances)
