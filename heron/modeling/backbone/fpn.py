"""Feature Pyramid Network (Detectron2's `FPN`, top blocks and builders).

Outputs are named ``p{k}`` with stride 2**k; lateral and output convs are named
``fpn_lateral{k}`` / ``fpn_output{k}`` after the level they serve (Detectron2's keys).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode
from heron.layers.batch_norm import get_norm
from heron.layers.shape_spec import ShapeSpec
from heron.layers.weight_init import c2_xavier_fill
from heron.layers.wrappers import Conv2d
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import BACKBONE_REGISTRY
from heron.modeling.backbone.resnet import build_resnet_backbone

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]


class LastLevelMaxPool(nn.Module):
    """P6 as a stride-2 subsampling of P5 (a 1x1 max-pool), as in Faster R-CNN FPN."""

    def __init__(self) -> None:
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: Tensor) -> list[Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """P6 and P7 from stride-2 3x3 convs (RetinaNet); P7 sees ReLU(P6)."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5") -> None:
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, x: Tensor) -> list[Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


def _check_strides(strides: list[int], in_features: list[str]) -> None:
    for i, stride in enumerate(strides):
        if stride <= 0 or stride & (stride - 1):
            raise ValueError(f"FPN input {in_features[i]} has stride {stride}, not a power of 2")
        if i > 0 and stride != 2 * strides[i - 1]:
            raise ValueError(
                f"FPN inputs must have strides that double from level to level; "
                f"got {dict(zip(in_features, strides))}"
            )


def _pyramid_strides(strides: list[int], top_block: nn.Module | None) -> dict[str, int]:
    """{"p<k>": 2**k} for the pyramid levels of `strides` (powers of 2), then the
    ``top_block.num_levels`` coarser levels the top block adds."""
    out = {f"p{int(math.log2(s))}": s for s in strides}
    if top_block is not None:
        last = int(math.log2(strides[-1]))
        for k in range(last + 1, last + 1 + top_block.num_levels):
            out[f"p{k}"] = 2**k
    return out


class FPN(Backbone):
    """A top-down pyramid with lateral connections over a bottom-up backbone."""

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: list[str] | tuple[str, ...],
        out_channels: int,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ) -> None:
        """
        Args:
            bottom_up: backbone whose outputs include ``in_features``.
            in_features: bottom-up features to use, from high to low resolution.
            out_channels: channels of every pyramid level.
            norm: norm of the lateral and output convs ("" for none, which gives them biases).
            top_block: extra coarser levels computed from a bottom-up or pyramid feature
                (``in_feature`` attribute) and returning ``num_levels`` maps.
            fuse_type: "sum" or "avg" of the lateral and the upsampled top-down map.
            square_pad: if > 0, inputs are padded to this square size.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"FPN bottom_up must be a Backbone, got {type(bottom_up).__name__}")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN in_features {missing} are not outputs of the bottom-up backbone "
                f"({sorted(input_shapes)})"
            )
        strides = [input_shapes[f].stride for f in in_features]
        _check_strides(strides, list(in_features))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for feature, stride in zip(in_features, strides):
            level = int(math.log2(stride))
            lateral = Conv2d(
                input_shapes[feature].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Coarsest level first: the order the top-down pass visits them.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides = _pyramid_strides(strides, top_block)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(N, C, H, W) images -> {"p2": ..., "p6": ...} pyramid maps, finest first."""
        bottom_up_features = self.bottom_up(x)
        top_down = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results = [self.output_convs[0](top_down)]
        for idx in range(1, len(self.lateral_convs)):
            lateral = self.lateral_convs[idx](bottom_up_features[self.in_features[-idx - 1]])
            upsampled = F.interpolate(top_down, scale_factor=2.0, mode="nearest")
            top_down = lateral + upsampled
            if self._fuse_type == "avg":
                top_down /= 2
            results.insert(0, self.output_convs[idx](top_down))
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                top_input = bottom_up_features[name]
            else:
                top_input = results[self._out_features.index(name)]
            results.extend(self.top_block(top_input))
        if len(results) != len(self._out_features):
            raise RuntimeError(f"FPN produced {len(results)} maps for outputs {self._out_features}")
        return dict(zip(self._out_features, results))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with a max-pooled P6 (Faster/Mask R-CNN FPN models)."""
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with P6/P7 computed from res5 (RetinaNet)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    res5_channels = bottom_up.output_shape()["res5"].channels
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(res5_channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
