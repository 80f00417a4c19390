"""Semantic segmentation: `SemanticSegmentor` (backbone plus a per-pixel head) and the
FPN head of Panoptic FPN, `SemSegFPNHead`, with the `SEM_SEG_HEADS_REGISTRY` they share.

Shapes: N images, C classes, H x W the padded input, (h, w) one image's size before
padding. Semantic targets are (N, H, W) int64 class indices, padded with the head's
ignore value; predictions are (N, C, H, W) per-class logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.batch_norm import get_norm
from heron.layers.shape_spec import ShapeSpec
from heron.layers.weight_init import c2_msra_fill
from heron.layers.wrappers import Conv2d
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import build_backbone
from heron.modeling.meta_arch.build import META_ARCH_REGISTRY
from heron.modeling.meta_arch.rcnn import _PixelNormalizer
from heron.modeling.postprocessing import sem_seg_postprocess
from heron.structures.image_list import ImageList
from heron.utils.registry import Registry

__all__ = [
    "SEM_SEG_HEADS_REGISTRY",
    "SemSegFPNHead",
    "SemanticSegmentor",
    "build_sem_seg_head",
    "pad_sem_seg_targets",
]

SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
SEM_SEG_HEADS_REGISTRY.__doc__ = """
Registry for semantic segmentation heads, called as ``obj(cfg, input_shape)`` with
``input_shape`` the backbone's {name: ShapeSpec}; a head returns (N, C, H, W) logits.
"""


def build_sem_seg_head(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The semantic segmentation head named by ``cfg.MODEL.SEM_SEG_HEAD.NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    return SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)


def pad_sem_seg_targets(
    batched_inputs: list[dict[str, Any]], backbone: Backbone, ignore_value: int, device
) -> Tensor:
    """Stack every input's ``sem_seg`` into (N, H, W), padded with ``ignore_value``.

    The padding follows the images' (the backbone's size divisibility and padding
    constraints), so targets line up with the padded image batch.
    """
    targets = []
    for i, inputs in enumerate(batched_inputs):
        if "sem_seg" not in inputs:
            raise KeyError(f"input {i} has no 'sem_seg'; keys are {sorted(inputs)}")
        target = inputs["sem_seg"]
        if not isinstance(target, Tensor) or target.dim() != 2 or target.is_floating_point():
            shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            dtype = f", {target.dtype}" if isinstance(target, Tensor) else ""
            raise ValueError(
                f"input {i}: 'sem_seg' must be an integer (H, W) tensor of class indices, "
                f"got {shape}{dtype}"
            )
        targets.append(target.to(device))
    return ImageList.from_tensors(
        targets,
        backbone.size_divisibility,
        ignore_value,
        backbone.padding_constraints,
    ).tensor


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(_PixelNormalizer):
    """Backbone -> semantic segmentation head.

    Input: list of dicts with ``image`` (C, H, W), optional ``height``/``width`` (output
    size) and, for training, ``sem_seg`` (H, W) int64 class indices.
    Output: training, {"loss_sem_seg": scalar}; inference, one {"sem_seg": (C, height,
    width) logits} per image.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone: feature extractor; its size_divisibility sets the padding.
            sem_seg_head: maps the backbone features (and targets) to logits (and losses).
            pixel_mean, pixel_std: per-channel normalization of the input image.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self._register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        targets = None
        if self.training or "sem_seg" in batched_inputs[0]:
            targets = pad_sem_seg_targets(
                batched_inputs, self.backbone, self.sem_seg_head.ignore_value, self.device
            )
        results, losses = self.sem_seg_head(features, targets)
        if self.training:
            return losses
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"sem_seg": sem_seg_postprocess(result, image_size, height, width)})
        return processed


@SEM_SEG_HEADS_REGISTRY.register()
class SemSegFPNHead(nn.Module):
    """The semantic branch of Panoptic FPN (Kirillov et al., 2019).

    Each input level goes through a "scale head" of 3x3 conv + norm + ReLU blocks, each
    block followed by a 2x bilinear upsampling until the level reaches ``common_stride``
    (stride 4 with p2..p5: one block for p2 and p3, two for p4, three for p5). The levels
    are summed, a 1x1 conv predicts per-class logits, and a final bilinear upsampling by
    ``common_stride`` brings them to the input resolution.

    forward: {name: (N, C_in, H / stride, W / stride)} and optional (N, H, W) targets ->
    ((N, C, H, W) logits or None in training, {"loss_sem_seg": scalar} or {}).
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        loss_weight: float = 1.0,
        norm: str | Callable[[int], nn.Module] | None = None,
        ignore_value: int = -1,
    ) -> None:
        """
        Args:
            input_shape: the input levels' shapes; they are used in increasing stride order.
            num_classes: number of output classes C.
            conv_dims: channels of every scale-head conv.
            common_stride: stride at which the levels are summed (a power of two no larger
                than any input stride).
            loss_weight: multiplier of the cross-entropy loss.
            norm: normalization after each conv ("GN", "BN", ... or None/"").
            ignore_value: target label that contributes no loss.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("SemSegFPNHead: input_shape is empty; check SEM_SEG_HEAD.IN_FEATURES")
        levels = sorted(input_shape.items(), key=lambda item: item[1].stride)
        for name, shape in levels:
            if shape.stride < common_stride:
                raise ValueError(
                    f"SemSegFPNHead: feature {name!r} has stride {shape.stride}, below "
                    f"common_stride={common_stride}"
                )
        self.in_features = [name for name, _ in levels]
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = loss_weight

        self.scale_heads = []
        for name, shape in levels:
            head = self._scale_head(shape, conv_dims, norm)
            self.scale_heads.append(head)
            # Registered under the feature's name: state_dict keys are "<name>.<i>.*".
            self.add_module(name, head)
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1, stride=1, padding=0)
        c2_msra_fill(self.predictor)

    def _scale_head(
        self, shape: ShapeSpec, conv_dims: int, norm: str | Callable[[int], nn.Module] | None
    ) -> nn.Sequential:
        num_blocks = max(1, int(np.log2(shape.stride) - np.log2(self.common_stride)))
        ops: list[nn.Module] = []
        for k in range(num_blocks):
            conv = Conv2d(
                shape.channels if k == 0 else conv_dims,
                conv_dims,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, conv_dims),
                activation=F.relu,
            )
            c2_msra_fill(conv)
            ops.append(conv)
            if shape.stride != self.common_stride:
                ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        return nn.Sequential(*ops)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise KeyError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not "
                f"output; it outputs {sorted(input_shape)}"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "common_stride": head.COMMON_STRIDE,
            "norm": head.NORM,
            "loss_weight": head.LOSS_WEIGHT,
        }

    def forward(
        self, features: dict[str, Tensor], targets: Tensor | None = None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Logits at the input resolution (inference) or the loss (training).

        Args:
            features: backbone outputs, at least the head's ``in_features``.
            targets: (N, H, W) int64 labels, required in training.
        """
        x = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("SemSegFPNHead: targets are required in training")
            return None, self.losses(x, targets)
        x = F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return x, {}

    def layers(self, features: dict[str, Tensor]) -> Tensor:
        """(N, C, H / common_stride, W / common_stride) logits: the scale heads' sum,
        through the 1x1 predictor."""
        x = None
        for name, head in zip(self.in_features, self.scale_heads):
            y = head(features[name])
            x = y if x is None else x + y
        return self.predictor(x)

    def losses(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Mean cross-entropy over non-ignored pixels, times ``loss_weight``.

        Args:
            predictions: (N, C, H / common_stride, W / common_stride) logits.
            targets: (N, H, W) int64 labels; ``ignore_value`` marks pixels without a label.
        """
        predictions = predictions.float()  # cross-entropy in float32 under autocast
        predictions = F.interpolate(
            predictions, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        if predictions.shape[-2:] != targets.shape[-2:]:
            raise ValueError(
                f"SemSegFPNHead: targets of shape {tuple(targets.shape)} do not match the "
                f"upsampled predictions {tuple(predictions.shape)} (pad both the same way)"
            )
        loss = F.cross_entropy(
            predictions, targets.long(), reduction="mean", ignore_index=self.ignore_value
        )
        return {"loss_sem_seg": loss * self.loss_weight}
