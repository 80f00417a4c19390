"""Cascade R-CNN heads: box stages trained at increasing IoU thresholds, each refining
the previous stage's boxes; inference averages the stages' class probabilities."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import Function

from heron.config.config import CfgNode, configurable
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.box_regression import Box2BoxTransform
from heron.modeling.matcher import Matcher
from heron.modeling.poolers import ROIPooler
from heron.modeling.roi_heads.box_head import build_box_head
from heron.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from heron.modeling.roi_heads.roi_heads import (
    ROI_HEADS_REGISTRY,
    StandardROIHeads,
    _build_pooler,
    _shared_channels,
)
from heron.structures.boxes import Boxes, pairwise_iou
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage

__all__ = ["CascadeROIHeads"]


class _ScaleGradient(Function):
    """Identity forward; multiplies the gradient by ``scale`` (each stage's share of the
    shared pooled features' gradient)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return input

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads(StandardROIHeads):
    """`StandardROIHeads` whose box branch is a cascade of (head, predictor, matcher)."""

    @configurable
    def __init__(
        self,
        *,
        box_in_features: list[str],
        box_pooler: ROIPooler,
        box_heads: list[nn.Module],
        box_predictors: list[nn.Module],
        proposal_matchers: list[Matcher],
        **kwargs: Any,
    ) -> None:
        """
        Args:
            box_heads, box_predictors, proposal_matchers: one per stage, same length.
            kwargs: the other `StandardROIHeads` arguments (no proposal_matcher).
        """
        if "proposal_matcher" in kwargs:
            raise ValueError("CascadeROIHeads takes proposal_matchers, one per stage")
        if not len(box_heads) == len(box_predictors) == len(proposal_matchers):
            raise ValueError(
                f"cascade stages disagree: {len(box_heads)} heads, {len(box_predictors)} "
                f"predictors, {len(proposal_matchers)} matchers"
            )
        self.num_cascade_stages = len(box_heads)
        kwargs["proposal_matcher"] = proposal_matchers[0]
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            **kwargs,
        )
        self.proposal_matchers = proposal_matchers

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        ret.pop("proposal_matcher")
        return ret

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        reg_weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ious = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS
        if len(reg_weights) != len(ious):
            raise ValueError(
                f"ROI_BOX_CASCADE_HEAD has {len(reg_weights)} BBOX_REG_WEIGHTS for {len(ious)} IOUS"
            )
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError("CascadeROIHeads needs MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True")
        if ious[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
            raise ValueError(
                f"ROI_BOX_CASCADE_HEAD.IOUS[0]={ious[0]} must equal "
                f"ROI_HEADS.IOU_THRESHOLDS[0]={cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]}"
            )
        pooled_shape = ShapeSpec(
            channels=_shared_channels(input_shape, in_features), width=resolution, height=resolution
        )
        box_heads, box_predictors, matchers = [], [], []
        for iou, weights in zip(ious, reg_weights):
            head = build_box_head(cfg, pooled_shape)
            box_heads.append(head)
            box_predictors.append(
                FastRCNNOutputLayers(
                    cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=weights)
                )
            )
            matchers.append(Matcher([iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": _build_pooler(cfg.MODEL.ROI_BOX_HEAD, input_shape, in_features),
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": matchers,
        }

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        if self.training:
            proposals = self._sample_training_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def _forward_box(
        self,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        features = [features[f] for f in self.box_in_features]
        head_outputs = []  # (predictor, predictions, proposals) per stage
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                # The previous stage's boxes become this stage's proposals.
                proposals = self._create_proposals_from_boxes(
                    prev_pred_boxes, image_sizes, [x.objectness_logits for x in proposals]
                )
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))

        if self.training:
            losses = {}
            for stage, (predictor, predictions, stage_proposals) in enumerate(head_outputs):
                stage_losses = predictor.losses(predictions, stage_proposals)
                losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
            return losses
        # Average the class probabilities of all stages; boxes come from the last stage.
        scores_per_stage = [p.predict_probs(pred, props) for p, pred, props in head_outputs]
        scores = [
            sum(list(per_image)) * (1.0 / self.num_cascade_stages)
            for per_image in zip(*scores_per_stage)
        ]
        predictor, predictions, proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        pred_instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return pred_instances

    @torch.no_grad()
    def _match_and_label_boxes(
        self, proposals: list[Instances], stage: int, targets: list[Instances]
    ) -> list[Instances]:
        """Label every proposal of a later stage with its gt class/box at that stage's IoU."""
        num_fg, num_bg = [], []
        for per_image, targets_per_image in zip(proposals, targets):
            iou = pairwise_iou(targets_per_image.gt_boxes, per_image.proposal_boxes)
            matched_idxs, labels = self.proposal_matchers[stage](iou)
            if len(targets_per_image) > 0:
                gt_classes = targets_per_image.gt_classes[matched_idxs]
                gt_classes[labels == 0] = self.num_classes
                gt_boxes = targets_per_image.gt_boxes[matched_idxs]
            else:
                gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
                gt_boxes = Boxes(targets_per_image.gt_boxes.tensor.new_zeros((len(per_image), 4)))
            per_image.gt_classes = gt_classes
            per_image.gt_boxes = gt_boxes
            num_fg.append(int((labels == 1).sum()))
            num_bg.append(labels.numel() - num_fg[-1])
        storage = try_get_event_storage()
        if storage is not None:
            storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / len(num_fg))
            storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / len(num_bg))
        return proposals

    def _run_stage(
        self, features: list[Tensor], proposals: list[Instances], stage: int
    ) -> tuple[Tensor, Tensor]:
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        if self.training:
            # Every stage backpropagates into the shared features; scale so the sum
            # over stages has the size of one stage's gradient.
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _create_proposals_from_boxes(
        self, boxes: list[Tensor], image_sizes: list[tuple[int, int]], logits: list[Tensor]
    ) -> list[Instances]:
        proposals = []
        for boxes_per_image, image_size, logit in zip(boxes, image_sizes, logits):
            boxes_per_image = Boxes(boxes_per_image.detach())
            boxes_per_image.clip(image_size)
            if self.training:
                # Training drops empty boxes; inference keeps them so outputs stay aligned.
                keep = boxes_per_image.nonempty()
                boxes_per_image, logit = boxes_per_image[keep], logit[keep]
            proposal = Instances(image_size)
            proposal.proposal_boxes = boxes_per_image
            proposal.objectness_logits = logit
            proposals.append(proposal)
        return proposals
