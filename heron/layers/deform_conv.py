"""Deformable convolutions (v1 and modulated v2) over `torchvision.ops.deform_conv2d`.

Offsets are laid out as in Detectron2 and torchvision: for deformable group g and kernel
tap k (row-major over the kernel), channel `2 * (g * kh * kw + k)` holds the y offset and
the next channel the x offset, in input pixels. The modulation mask has one channel per
(group, tap).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv"]


class _DeformConvBase(nn.Module):
    """Shared arguments, parameters, checks and repr of the two deformable convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int],
        dilation: int | tuple[int, int],
        groups: int,
        deformable_groups: int,
        bias: bool,
        norm: nn.Module | None,
        activation: Callable[[Tensor], Tensor] | None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if in_channels % groups != 0:
            raise ValueError(
                f"{name}: in_channels {in_channels} is not divisible by groups {groups}"
            )
        if out_channels % groups != 0:
            raise ValueError(
                f"{name}: out_channels {out_channels} is not divisible by groups {groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation

        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _check_inputs(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> None:
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(
                f"{name}: expected a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
            )
        taps = self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]
        if offset.dim() != 4 or offset.shape[1] != 2 * taps:
            raise ValueError(
                f"{name}: offset must be (N, {2 * taps}, H_out, W_out) "
                f"(2 x deformable_groups x kh x kw channels), got shape {tuple(offset.shape)}"
            )
        if mask is not None and (mask.dim() != 4 or mask.shape[1] != taps):
            raise ValueError(
                f"{name}: mask must be (N, {taps}, H_out, W_out) "
                f"(deformable_groups x kh x kw channels), got shape {tuple(mask.shape)}"
            )

    def _output_hw(self, height: int, width: int) -> list[int]:
        return [
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, p, d, k, s in zip(
                (height, width), self.padding, self.dilation, self.kernel_size, self.stride
            )
        ]

    def _empty_output(self, x: Tensor) -> Tensor:
        """An empty output of the right shape that stays connected to x and the weight."""
        shape = [x.shape[0], self.out_channels, *self._output_hw(x.shape[-2], x.shape[-1])]
        return x.new_zeros(shape) + (x.sum() + self.weight.sum()) * 0

    def _run(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        self._check_inputs(x, offset, mask)
        if x.numel() == 0:
            return self._empty_output(x)
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.with_bias}"
        )


class DeformConv(_DeformConvBase):
    """Deformable convolution (Dai et al., 2017): each kernel tap samples at a learned offset.

    Arguments are those of `Conv2d` plus:

    Args:
        deformable_groups: number of offset groups; input channels are split into this
            many groups, each with its own offsets.
        bias: add a learned bias (Detectron2's models use none).
        norm: normalization module applied after the convolution.
        activation: callable applied after `norm`.

    forward(x (N, C_in, H, W), offset (N, 2 * deformable_groups * kh * kw, H', W'))
        -> (N, C_out, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deformable_groups,
            bias,
            norm,
            activation,
        )

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return self._run(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (DCNv2, Zhu et al., 2019).

    Like `DeformConv`, and each sampled value is also multiplied by a per-tap mask
    (usually a sigmoid output in [0, 1]).

    forward(x (N, C_in, H, W), offset (N, 2 * dg * kh * kw, H', W'), mask (N, dg * kh * kw, H', W'))
        -> (N, C_out, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deformable_groups,
            bias,
            norm,
            activation,
        )

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self._run(x, offset, mask)
