"""Mask heads, the mask loss and mask inference.

Shapes:
    R: regions over the batch; K: classes (1 when class-agnostic); M: mask side (28).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.batch_norm import get_norm
from heron.layers.shape_spec import ShapeSpec
from heron.layers.weight_init import c2_msra_fill
from heron.layers.wrappers import Conv2d, ConvTranspose2d, cat, move_device_like
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage
from heron.utils.registry import Registry

__all__ = [
    "ROI_MASK_HEAD_REGISTRY",
    "BaseMaskRCNNHead",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
]

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Registry for mask heads, called as ``obj(cfg, input_shape)``.
"""


def _log_mask_stats(pred_mask_logits: Tensor, gt_masks: Tensor) -> None:
    storage = try_get_event_storage()
    if storage is None:
        return
    incorrect = (pred_mask_logits > 0.0) != gt_masks
    num_positive = int(gt_masks.sum())
    storage.put_scalar("mask_rcnn/accuracy", 1 - int(incorrect.sum()) / max(incorrect.numel(), 1.0))
    storage.put_scalar(
        "mask_rcnn/false_positive",
        int((incorrect & ~gt_masks).sum()) / max(gt_masks.numel() - num_positive, 1.0),
    )
    storage.put_scalar(
        "mask_rcnn/false_negative", int((incorrect & gt_masks).sum()) / max(num_positive, 1.0)
    )


def mask_rcnn_loss(
    pred_mask_logits: Tensor, instances: list[Instances], vis_period: int = 0
) -> Tensor:
    """Mean per-pixel BCE between each region's mask logits for its gt class and the gt
    mask cropped to the region's proposal box and resized to M x M.

    Args:
        pred_mask_logits: (R, K, M, M) logits.
        instances: per image, foreground regions with ``proposal_boxes``, ``gt_masks``
            (BitMasks or PolygonMasks) and ``gt_classes``.
        vis_period: kept for Detectron2 signature compatibility (visualization is done by
            the training hooks, not here).
    """
    cls_agnostic = pred_mask_logits.size(1) == 1
    num_masks = pred_mask_logits.size(0)
    side = pred_mask_logits.size(2)
    if pred_mask_logits.size(2) != pred_mask_logits.size(3):
        raise ValueError(f"mask logits must be square, got {tuple(pred_mask_logits.shape)}")
    gt_classes, gt_masks = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        if not cls_agnostic:
            gt_classes.append(per_image.gt_classes.to(dtype=torch.int64))
        masks = per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, side)
        gt_masks.append(masks.to(device=pred_mask_logits.device))
    if len(gt_masks) == 0:
        return pred_mask_logits.sum() * 0  # keeps the graph for empty batches
    gt_masks = cat(gt_masks, dim=0)
    if cls_agnostic:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        rows = torch.arange(num_masks, device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[rows, cat(gt_classes, dim=0)]
    gt_masks_bool = gt_masks if gt_masks.dtype == torch.bool else gt_masks > 0.5
    _log_mask_stats(pred_mask_logits, gt_masks_bool)
    return F.binary_cross_entropy_with_logits(
        pred_mask_logits, gt_masks.to(dtype=torch.float32), reduction="mean"
    )


def mask_rcnn_inference(pred_mask_logits: Tensor, pred_instances: list[Instances]) -> None:
    """Set ``pred_masks`` (Ri, 1, M, M) probabilities, for each detection's predicted
    class, on every image's Instances (in place)."""
    if pred_mask_logits.size(1) == 1:
        mask_probs = pred_mask_logits.sigmoid()
    else:
        class_pred = cat([i.pred_classes for i in pred_instances])
        rows = move_device_like(
            torch.arange(pred_mask_logits.shape[0], device=class_pred.device), class_pred
        )
        mask_probs = pred_mask_logits[rows, class_pred][:, None].sigmoid()
    for probs, instances in zip(
        mask_probs.split([i.__len__() for i in pred_instances], dim=0), pred_instances
    ):
        instances.pred_masks = probs


class BaseMaskRCNNHead(nn.Module, metaclass=ABCMeta):
    """Mask head base: subclasses define ``layers(x)``; this adds the loss/inference."""

    @configurable
    def __init__(self, *, loss_weight: float = 1.0, vis_period: int = 0) -> None:
        super().__init__()
        self.vis_period = vis_period
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        return {"vis_period": cfg.VIS_PERIOD}

    def forward(self, x: Tensor, instances: list[Instances]) -> dict[str, Tensor] | list[Instances]:
        """Training: {"loss_mask": ...}; inference: the instances with ``pred_masks``."""
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances

    @abstractmethod
    def layers(self, x: Tensor) -> Tensor:
        """(R, C, S, S) pooled features -> (R, K, M, M) mask logits."""


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(BaseMaskRCNNHead, nn.Sequential):
    """3x3 convs (``mask_fcn1``..), a 2x deconv (``deconv``) and a 1x1 ``predictor``.

    layers: (R, C, S, S) -> (R, K, 2S, 2S) logits.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: Sequence[int],
        conv_norm: str = "",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            input_shape: shape of the pooled features.
            num_classes: mask channels (1 for class-agnostic masks).
            conv_dims: channels of the convs; the last entry is the deconv's.
            conv_norm: norm of the convs ("" for none).
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError("conv_dims must have at least one entry (the deconv's)")
        self.conv_norm_relus = []
        channels = input_shape.channels
        for k, conv_dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(
                channels,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, conv_dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            channels = conv_dim
        self.deconv = ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2, padding=0)
        self.add_module("deconv_relu", nn.ReLU())
        self.predictor = Conv2d(conv_dims[-1], num_classes, kernel_size=1, stride=1, padding=0)
        for layer in [*self.conv_norm_relus, self.deconv]:
            c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        if self.predictor.bias is not None:
            nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        head = cfg.MODEL.ROI_MASK_HEAD
        ret = super().from_config(cfg, input_shape)
        ret.update(
            input_shape=input_shape,
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            num_classes=1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        )
        return ret

    def layers(self, x: Tensor) -> Tensor:
        for layer in self:
            x = layer(x)
        return x


def build_mask_head(cfg: CfgNode, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> nn.Module:
    """The mask head named by ``cfg.MODEL.ROI_MASK_HEAD.NAME``."""
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(cfg, input_shape)
