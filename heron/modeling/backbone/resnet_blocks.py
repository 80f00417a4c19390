"""ResNet building blocks: the stem and the basic, bottleneck and deformable blocks.

State-dict names (``conv1``, ``conv1.norm``, ``shortcut``, ``conv2_offset``, ...) are
Detectron2's, so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from heron.layers.batch_norm import get_norm
from heron.layers.blocks import CNNBlockBase
from heron.layers.deform_conv import DeformConv, ModulatedDeformConv
from heron.layers.weight_init import c2_msra_fill
from heron.layers.wrappers import Conv2d

__all__ = ["BasicBlock", "BasicStem", "BottleneckBlock", "DeformBottleneckBlock"]


def _projection_shortcut(
    in_channels: int, out_channels: int, stride: int, norm: str
) -> Conv2d | None:
    """1x1 projection for the residual path when channel counts differ, else None."""
    if in_channels == out_channels:
        return None
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=1,
        stride=stride,
        bias=False,
        norm=get_norm(norm, out_channels),
    )


def _add_shortcut(self_: CNNBlockBase, x: Tensor, out: Tensor) -> Tensor:
    shortcut = x if self_.shortcut is None else self_.shortcut(x)
    out += shortcut
    return F.relu_(out)


class BasicStem(CNNBlockBase):
    """7x7 stride-2 conv, ReLU, 3x3 stride-2 max-pool: the ResNet stem (stride 4)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN") -> None:
        super().__init__(in_channels, out_channels, 4)
        self.in_channels = in_channels
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        c2_msra_fill(self.conv1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN"
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        return _add_shortcut(self, x, out)


class BottleneckBlock(CNNBlockBase):
    """1x1 reduce, 3x3 (grouped, dilated), 1x1 expand, plus the residual (ResNet-50+).

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (MSRA/Caffe2 models) instead of
    the 3x3 conv (torchvision/Facebook models).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def _conv2(self, x: Tensor) -> Tensor:
        return self.conv2(x)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self._conv2(out))
        out = self.conv3(out)
        return _add_shortcut(self, x, out)


class DeformBottleneckBlock(BottleneckBlock):
    """A bottleneck block whose 3x3 conv is deformable (v1) or modulated deformable (v2).

    ``conv2_offset`` predicts 2 offsets per kernel tap and deformable group (plus one mask
    value per tap when modulated); it starts at zero, so the block starts as a plain one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
        )
        self.deform_modulated = deform_modulated
        stride_3x3 = 1 if stride_in_1x1 else stride
        # 3x3 kernel: 9 taps x (dx, dy) = 18 offsets, + 9 mask logits when modulated.
        per_group = 27 if deform_modulated else 18
        self.conv2_offset = Conv2d(
            bottleneck_channels,
            per_group * deform_num_groups,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        deform_op = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = deform_op(  # replaces the plain 3x3 conv, same state_dict keys
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            deformable_groups=deform_num_groups,
            norm=get_norm(norm, bottleneck_channels),
        )
        c2_msra_fill(self.conv2)
        torch.nn.init.constant_(self.conv2_offset.weight, 0)
        torch.nn.init.constant_(self.conv2_offset.bias, 0)

    def _conv2(self, x: Tensor) -> Tensor:
        if self.deform_modulated:
            # Detectron2 splits conv2_offset's output in thirds: two of offsets, one of
            # mask logits.
            offset_x, offset_y, mask = torch.chunk(self.conv2_offset(x), 3, dim=1)
            offset = torch.cat((offset_x, offset_y), dim=1)
            return self.conv2(x, offset, mask.sigmoid())
        return self.conv2(x, self.conv2_offset(x))
