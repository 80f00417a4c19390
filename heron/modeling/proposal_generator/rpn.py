"""Region Proposal Network (Detectron2's `RPN` and `StandardRPNHead`).

Shapes:
    N: images; L: feature levels; Hi, Wi: level i's size; A: anchors per location;
    B: box dimension (4); R = sum(Hi * Wi * A): anchors over all levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import Conv2d, cat
from heron.modeling.anchor_generator import build_anchor_generator
from heron.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from heron.modeling.matcher import Matcher
from heron.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from heron.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from heron.modeling.sampling import subsample_labels
from heron.structures.boxes import Boxes, pairwise_iou
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage
from heron.utils.memory import retry_if_cuda_oom
from heron.utils.registry import Registry

__all__ = ["RPN", "RPN_HEAD_REGISTRY", "StandardRPNHead", "build_rpn_head"]

RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
RPN_HEAD_REGISTRY.__doc__ = """
Registry for RPN heads, called as ``obj(cfg, input_shape: list[ShapeSpec])``; they map
L feature maps to L objectness maps (N, A, Hi, Wi) and L delta maps (N, A*B, Hi, Wi).
"""


def build_rpn_head(cfg: CfgNode, input_shape: list[ShapeSpec]) -> nn.Module:
    """The RPN head named by ``cfg.MODEL.RPN.HEAD_NAME``."""
    return RPN_HEAD_REGISTRY.get(cfg.MODEL.RPN.HEAD_NAME)(cfg, input_shape)


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(nn.Module):
    """Shared 3x3 conv(s) + ReLU, then 1x1 convs for objectness and box deltas per level."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        box_dim: int = 4,
        conv_dims: Sequence[int] = (-1,),
    ) -> None:
        """
        Args:
            in_channels: channels of every input level.
            num_anchors: A, anchors per location.
            box_dim: B, 4 for axis-aligned boxes, 5 for rotated ones.
            conv_dims: output channels of the shared convs; -1 keeps in_channels. One
                entry gives a single conv named ``conv`` (Detectron2's key).
        """
        super().__init__()
        channels = in_channels
        if len(conv_dims) == 1:
            out = channels if conv_dims[0] == -1 else conv_dims[0]
            self.conv = self._rpn_conv(channels, out)
            channels = out
        else:
            self.conv = nn.Sequential()
            for k, dim in enumerate(conv_dims):
                out = channels if dim == -1 else dim
                if out <= 0:
                    raise ValueError(f"MODEL.RPN.CONV_DIMS entries must be > 0 or -1, got {dim}")
                self.conv.add_module(f"conv{k}", self._rpn_conv(channels, out))
                channels = out
        self.objectness_logits = nn.Conv2d(channels, num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * box_dim, kernel_size=1, stride=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    @staticmethod
    def _rpn_conv(in_channels: int, out_channels: int) -> Conv2d:
        return Conv2d(
            in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU()
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"RPN head inputs must share a channel count, got {sorted(channels)}")
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = set(anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                f"every level needs the same number of anchors, got {anchor_generator.num_anchors}"
            )
        return {
            "in_channels": channels.pop(),
            "num_anchors": num_anchors.pop(),
            "box_dim": anchor_generator.box_dim,
            "conv_dims": cfg.MODEL.RPN.CONV_DIMS,
        }

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """L maps (N, C, Hi, Wi) -> L logits (N, A, Hi, Wi) and L deltas (N, A*B, Hi, Wi)."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """Region Proposal Network: objectness and box deltas on anchors, then proposals."""

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: float | dict[str, float] = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
    ) -> None:
        """
        Args:
            in_features: names of the feature maps to use.
            head: the RPN head (``rpn_head`` in the state_dict).
            anchor_generator: gives the anchors of every level.
            anchor_matcher: labels anchors against ground truth.
            box2box_transform: anchor box coding.
            batch_size_per_image: anchors sampled per image for the losses.
            positive_fraction: wanted fraction of positive anchors in that sample.
            pre_nms_topk, post_nms_topk: (training, inference) proposal counts before NMS
                (per level) and after NMS (per image).
            nms_thresh: NMS IoU threshold.
            min_box_size: proposals with a side at most this (pixels) are dropped.
            anchor_boundary_thresh: anchors reaching beyond the image by more than this
                are ignored in training (< 0: keep all).
            loss_weight: a weight for both losses, or one per loss name.
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            smooth_l1_beta: transition point of the smooth L1 loss (0: L1).
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        if isinstance(loss_weight, float | int):
            loss_weight = {"loss_rpn_cls": loss_weight, "loss_rpn_loc": loss_weight}
        self.loss_weight = loss_weight
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta

    # The box coding from_config builds with RPN.BBOX_REG_WEIGHTS (RRPN: the rotated one).
    _box_coder = Box2BoxTransform
    # The per-image proposal selection predict_proposals runs (RRPN: the rotated one).
    _find_top_proposals = staticmethod(find_top_rpn_proposals)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        rpn = cfg.MODEL.RPN
        in_features = rpn.IN_FEATURES
        shapes = [input_shape[f] for f in in_features]
        return {
            "in_features": in_features,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "nms_thresh": rpn.NMS_THRESH,
            "batch_size_per_image": rpn.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": rpn.POSITIVE_FRACTION,
            "loss_weight": {
                "loss_rpn_cls": rpn.LOSS_WEIGHT,
                "loss_rpn_loc": rpn.BBOX_REG_LOSS_WEIGHT * rpn.LOSS_WEIGHT,
            },
            "anchor_boundary_thresh": rpn.BOUNDARY_THRESH,
            "box2box_transform": cls._box_coder(weights=rpn.BBOX_REG_WEIGHTS),
            "box_reg_loss_type": rpn.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": rpn.SMOOTH_L1_BETA,
            "pre_nms_topk": (rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(
                rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True
            ),
            "head": build_rpn_head(cfg, shapes),
        }

    def _subsample_labels(self, label: Tensor) -> Tensor:
        """Keep a random balanced sample of labels; everything else becomes -1 (ignore)."""
        pos_idx, neg_idx = subsample_labels(
            label, self.batch_size_per_image, self.positive_fraction, 0
        )
        label.fill_(-1)
        label.scatter_(0, pos_idx, 1)
        label.scatter_(0, neg_idx, 0)
        return label

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: (R,) int8 labels (1, 0, -1 ignore) and (R, 4) matched gt boxes."""
        anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            gt_boxes = instances.gt_boxes
            iou = retry_if_cuda_oom(pairwise_iou)(gt_boxes, anchors)
            matched_idxs, labels = retry_if_cuda_oom(self.anchor_matcher)(iou)
            labels = labels.to(device=gt_boxes.device)
            del iou
            if self.anchor_boundary_thresh >= 0:
                inside = anchors.inside_box(instances.image_size, self.anchor_boundary_thresh)
                labels[~inside] = -1
            labels = self._subsample_labels(labels)
            if len(gt_boxes) == 0:
                matched = torch.zeros_like(anchors.tensor)
            else:
                matched = gt_boxes[matched_idxs].tensor
            gt_labels.append(labels)
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: list[Boxes],
        pred_objectness_logits: list[Tensor],
        gt_labels: list[Tensor],
        pred_anchor_deltas: list[Tensor],
        gt_boxes: list[Tensor],
    ) -> dict[str, Tensor]:
        """Objectness BCE over sampled anchors and box regression over positive ones,
        both normalized by the sample size (batch_size_per_image * N)."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = gt_labels == 1
        storage = try_get_event_storage()
        if storage is not None:
            storage.put_scalar("rpn/num_pos_anchors", pos_mask.sum().item() / num_images)
            storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum().item() / num_images)
        loc_loss = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        valid = gt_labels >= 0
        cls_loss = F.binary_cross_entropy_with_logits(
            cat(pred_objectness_logits, dim=1)[valid],
            gt_labels[valid].to(torch.float32),
            reduction="sum",
        )
        normalizer = self.batch_size_per_image * num_images
        losses = {"loss_rpn_cls": cls_loss / normalizer, "loss_rpn_loc": loc_loss / normalizer}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        gt_instances: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Proposals for every image, and the RPN losses in training (else {})."""
        features = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(features)
        logits, deltas = self.rpn_head(features)
        box_dim = self.anchor_generator.box_dim
        # (N, A, Hi, Wi) -> (N, Hi*Wi*A): location-major, matching the anchor order.
        logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
        # (N, A*B, Hi, Wi) -> (N, A, B, Hi, Wi) -> (N, Hi, Wi, A, B) -> (N, Hi*Wi*A, B)
        deltas = [
            x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for x in deltas
        ]
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN needs gt_instances in training mode")
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        else:
            losses = {}
        proposals = self.predict_proposals(anchors, logits, deltas, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors: list[Boxes],
        pred_objectness_logits: list[Tensor],
        pred_anchor_deltas: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Instances]:
        """Decode all anchors and keep the best proposals of each image (no gradient:
        proposals are treated as constants by the second stage, as in Detectron2)."""
        proposals = self._decode_proposals(anchors, pred_anchor_deltas)
        return self._find_top_proposals(
            proposals,
            pred_objectness_logits,
            image_sizes,
            self.nms_thresh,
            self.pre_nms_topk[self.training],
            self.post_nms_topk[self.training],
            self.min_box_size,
            self.training,
        )

    def _decode_proposals(
        self, anchors: list[Boxes], pred_anchor_deltas: list[Tensor]
    ) -> list[Tensor]:
        """L tensors (N, Hi*Wi*A, B) of proposals decoded from the deltas."""
        num_images = pred_anchor_deltas[0].shape[0]
        proposals = []
        for anchors_i, deltas_i in zip(anchors, pred_anchor_deltas):
            box_dim = anchors_i.tensor.size(1)
            deltas_i = deltas_i.reshape(-1, box_dim)
            # The same anchors for every image: (R_i, B) -> (N * R_i, B).
            anchors_i = (
                anchors_i.tensor.unsqueeze(0).expand(num_images, -1, -1).reshape(-1, box_dim)
            )
            decoded = self.box2box_transform.apply_deltas(deltas_i, anchors_i)
            proposals.append(decoded.view(num_images, -1, box_dim))
        return proposals
