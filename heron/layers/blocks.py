"""CNN building blocks: the `CNNBlockBase` contract and a depthwise-separable convolution."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from heron.layers.batch_norm import FrozenBatchNorm2d, get_norm
from heron.layers.weight_init import c2_msra_fill
from heron.layers.wrappers import Conv2d

__all__ = ["CNNBlockBase", "DepthwiseSeparableConv2d"]


class CNNBlockBase(nn.Module):
    """Base of a CNN block with known input channels, output channels and stride.

    `forward` maps (N, in_channels, H, W) to (N, out_channels, H / stride, W / stride).
    Subclasses take these three arguments first in their `__init__`.

    Attributes:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: ratio of the input's spatial size to the output's.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> CNNBlockBase:
        """Make the block untrainable: no parameter requires grad and every BatchNorm2d /
        SyncBatchNorm inside becomes a FrozenBatchNorm2d (statistics no longer update).

        Returns:
            the block itself.
        """
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


class DepthwiseSeparableConv2d(nn.Module):
    """A k x k depthwise convolution followed by a 1 x 1 pointwise convolution.

    Each convolution may have its own norm and activation (MobileNet uses both; Xception
    only the second). A convolution has a bias exactly when it has no norm. Submodules are
    named `depthwise` and `pointwise`, as in Detectron2.

    Args:
        in_channels: input channels (also the depthwise convolution's groups).
        out_channels: output channels of the pointwise convolution.
        kernel_size, padding, dilation: of the depthwise convolution.
        norm1, norm2: norm of the depthwise / pointwise convolution, as for `get_norm`.
        activation1, activation2: activation after each convolution.

    forward: (N, in_channels, H, W) -> (N, out_channels, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        dilation: int = 1,
        *,
        norm1: str | Callable[[int], nn.Module] | None = None,
        activation1: Callable[[Tensor], Tensor] | None = None,
        norm2: str | Callable[[int], nn.Module] | None = None,
        activation2: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.depthwise = Conv2d(
            in_channels,
            in_channels,
            kernel_size=kernel_size,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=not norm1,
            norm=get_norm(norm1, in_channels),
            activation=activation1,
        )
        self.pointwise = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            bias=not norm2,
            norm=get_norm(norm2, out_channels),
            activation=activation2,
        )
        c2_msra_fill(self.depthwise)
        c2_msra_fill(self.pointwise)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))
