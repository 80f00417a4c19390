"""Keypoint heads, the keypoint loss and keypoint inference.

Shapes:
    R: regions over the batch; K: keypoints per instance; S: heatmap side (56).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import Conv2d, ConvTranspose2d, cat, interpolate
from heron.structures.instances import Instances
from heron.structures.keypoints import heatmaps_to_keypoints
from heron.utils.events import try_get_event_storage
from heron.utils.registry import Registry

__all__ = [
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "BaseKeypointRCNNHead",
    "KRCNNConvDeconvUpsampleHead",
    "build_keypoint_head",
    "keypoint_rcnn_inference",
    "keypoint_rcnn_loss",
]

ROI_KEYPOINT_HEAD_REGISTRY = Registry("ROI_KEYPOINT_HEAD")
ROI_KEYPOINT_HEAD_REGISTRY.__doc__ = """
Registry for keypoint heads, called as ``obj(cfg, input_shape)``.
"""

_num_skipped_batches = 0  # batches without a visible keypoint, logged as a running count


def keypoint_rcnn_loss(
    pred_keypoint_logits: Tensor, instances: list[Instances], normalizer: float | None
) -> Tensor:
    """Cross-entropy over the S*S heatmap cells for every visible keypoint.

    Args:
        pred_keypoint_logits: (R, K, S, S) heatmap logits.
        instances: per image, regions with ``proposal_boxes`` and ``gt_keypoints``.
        normalizer: divide the summed loss by this; None divides by the number of visible
            keypoints.
    """
    global _num_skipped_batches
    side = pred_keypoint_logits.shape[2]
    heatmaps, valid = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        targets, visible = per_image.gt_keypoints.to_heatmap(per_image.proposal_boxes.tensor, side)
        heatmaps.append(targets.view(-1))
        valid.append(visible.view(-1))
    if heatmaps:
        targets = cat(heatmaps, dim=0)
        valid = torch.nonzero(cat(valid, dim=0).to(dtype=torch.uint8)).squeeze(1)
    if not heatmaps or valid.numel() == 0:
        _num_skipped_batches += 1
        storage = try_get_event_storage()
        if storage is not None:
            storage.put_scalar(
                "kpts_num_skipped_batches", _num_skipped_batches, smoothing_hint=False
            )
        return pred_keypoint_logits.sum() * 0
    num_regions, num_keypoints, height, width = pred_keypoint_logits.shape
    logits = pred_keypoint_logits.view(num_regions * num_keypoints, height * width)
    loss = F.cross_entropy(logits[valid], targets[valid], reduction="sum")
    if normalizer is None:
        normalizer = valid.numel()
    return loss / normalizer


def keypoint_rcnn_inference(pred_keypoint_logits: Tensor, pred_instances: list[Instances]) -> None:
    """Set ``pred_keypoints`` (Ri, K, 3: x, y, score) and ``pred_keypoint_heatmaps``
    (Ri, K, S, S) on every image's Instances (in place); x, y in input pixels."""
    boxes = cat([b.pred_boxes.tensor for b in pred_instances], dim=0)
    pred_keypoint_logits = pred_keypoint_logits.detach()
    keypoints = heatmaps_to_keypoints(pred_keypoint_logits, boxes.detach())
    counts = [i.__len__() for i in pred_instances]  # traced counts stay dynamic
    # Columns of heatmaps_to_keypoints: x, y, logit, score; Detectron2 reports x, y, score.
    keypoints = keypoints[:, :, [0, 1, 3]].split(counts, dim=0)
    heatmaps = pred_keypoint_logits.split(counts, dim=0)
    for kp, hm, instances in zip(keypoints, heatmaps, pred_instances):
        instances.pred_keypoints = kp
        instances.pred_keypoint_heatmaps = hm


class BaseKeypointRCNNHead(nn.Module, metaclass=ABCMeta):
    """Keypoint head base: subclasses define ``layers(x)``; this adds loss/inference."""

    @configurable
    def __init__(
        self, *, num_keypoints: int, loss_weight: float = 1.0, loss_normalizer: float | str = 1.0
    ) -> None:
        """
        Args:
            num_keypoints: K.
            loss_weight: multiplier of the loss.
            loss_normalizer: "visible" (divide by visible keypoints in the batch) or a
                number multiplied by the number of images.
        """
        super().__init__()
        self.num_keypoints = num_keypoints
        self.loss_weight = loss_weight
        if not (loss_normalizer == "visible" or isinstance(loss_normalizer, float | int)):
            raise ValueError(
                f"loss_normalizer must be 'visible' or a number, got {loss_normalizer!r}"
            )
        self.loss_normalizer = loss_normalizer

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        head = cfg.MODEL.ROI_KEYPOINT_HEAD
        ret = {"loss_weight": head.LOSS_WEIGHT, "num_keypoints": head.NUM_KEYPOINTS}
        if head.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS:
            ret["loss_normalizer"] = "visible"
        else:
            # The expected number of keypoints in a batch if all were visible.
            ret["loss_normalizer"] = (
                ret["num_keypoints"]
                * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
                * cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION
            )
        return ret

    def forward(self, x: Tensor, instances: list[Instances]) -> dict[str, Tensor] | list[Instances]:
        """Training: {"loss_keypoint": ...}; inference: instances with ``pred_keypoints``."""
        x = self.layers(x)
        if self.training:
            normalizer = (
                None if self.loss_normalizer == "visible" else len(instances) * self.loss_normalizer
            )
            return {
                "loss_keypoint": keypoint_rcnn_loss(x, instances, normalizer) * self.loss_weight
            }
        keypoint_rcnn_inference(x, instances)
        return instances

    @abstractmethod
    def layers(self, x: Tensor) -> Tensor:
        """(R, C, S0, S0) pooled features -> (R, K, S, S) heatmap logits."""


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleHead(BaseKeypointRCNNHead, nn.Sequential):
    """3x3 convs (``conv_fcn1``..), a 4x4 stride-2 deconv (``score_lowres``) and a 2x
    bilinear upsampling: (R, C, 14, 14) -> (R, K, 56, 56)."""

    @configurable
    def __init__(
        self, input_shape: ShapeSpec, *, num_keypoints: int, conv_dims: Sequence[int], **kwargs: Any
    ) -> None:
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        self.up_scale = 2.0
        channels = input_shape.channels
        for idx, out_channels in enumerate(conv_dims, 1):
            self.add_module(
                f"conv_fcn{idx}", Conv2d(channels, out_channels, 3, stride=1, padding=1)
            )
            self.add_module(f"conv_fcn_relu{idx}", nn.ReLU())
            channels = out_channels
        kernel = 4
        self.score_lowres = ConvTranspose2d(
            channels, num_keypoints, kernel, stride=2, padding=kernel // 2 - 1
        )
        for name, param in self.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                # Caffe2's MSRAFill for all convs, the deconv included.
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        ret["input_shape"] = input_shape
        ret["conv_dims"] = cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS
        return ret

    def layers(self, x: Tensor) -> Tensor:
        for layer in self:
            x = layer(x)
        return interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)


def build_keypoint_head(cfg: CfgNode, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> nn.Module:
    """The keypoint head named by ``cfg.MODEL.ROI_KEYPOINT_HEAD.NAME``."""
    return ROI_KEYPOINT_HEAD_REGISTRY.get(cfg.MODEL.ROI_KEYPOINT_HEAD.NAME)(cfg, input_shape)
