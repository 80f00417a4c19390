"""Atrous Spatial Pyramid Pooling (ASPP), the context module of DeepLab v3 / v3+."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.layers.batch_norm import get_norm
from heron.layers.blocks import DepthwiseSeparableConv2d
from heron.layers.weight_init import c2_xavier_fill
from heron.layers.wrappers import Conv2d

__all__ = ["ASPP"]


class ASPP(nn.Module):
    """Five parallel branches over the same features, concatenated and projected.

    Branches, in order (`convs.0` .. `convs.4`, Detectron2's state_dict names):
    a 1x1 conv; three 3x3 convs with the given dilations (padding = dilation, so the
    size is kept); and image pooling, an average pool followed by a 1x1 conv with bias
    and no norm (its output is 1x1 in space, where a batch norm makes little sense),
    upsampled bilinearly back to the input size. `project` is a 1x1 conv from
    5 * out_channels to out_channels. Convs with a norm have no bias; with norm "" they do.

    Args:
        in_channels: input channels C.
        out_channels: channels of every branch and of the output.
        dilations: the three dilations of the 3x3 branches.
        norm: norm of every conv except the pooling branch's, as for `get_norm`.
        activation: activation after every conv (each conv gets its own copy).
        pool_kernel_size: (kh, kw) of the image-pooling average pool (stride 1). None
            pools globally. When set, the input size must be divisible by it; setting it
            to the training feature size keeps the pooling window fixed at inference.
        dropout: dropout rate on the output in training (DeepLab uses 0.1).
        use_depthwise_separable_conv: build the 3x3 branches as
            `DepthwiseSeparableConv2d` with norm and activation after both convs.

    forward: (N, C, H, W) -> (N, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        *,
        norm: str | Callable[[int], nn.Module] | None,
        activation: Callable[[Tensor], Tensor] | None,
        pool_kernel_size: Sequence[int] | None = None,
        dropout: float = 0.0,
        use_depthwise_separable_conv: bool = False,
    ) -> None:
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"ASPP: dilations must hold 3 values, got {list(dilations)}")
        if pool_kernel_size is not None and len(pool_kernel_size) != 2:
            raise ValueError(
                f"ASPP: pool_kernel_size must be (kh, kw) or None, got {pool_kernel_size}"
            )
        self.pool_kernel_size = pool_kernel_size
        self.dropout = dropout
        use_bias = norm == ""
        self.convs = nn.ModuleList()
        self.convs.append(
            Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
                activation=deepcopy(activation),
            )
        )
        c2_xavier_fill(self.convs[-1])
        for dilation in dilations:
            self.convs.append(
                self._atrous_branch(
                    in_channels,
                    out_channels,
                    dilation,
                    norm,
                    activation,
                    use_bias,
                    use_depthwise_separable_conv,
                )
            )
        if pool_kernel_size is None:
            pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        else:
            pool = nn.AvgPool2d(kernel_size=tuple(pool_kernel_size), stride=1)
        pool_conv = Conv2d(in_channels, out_channels, 1, bias=True, activation=deepcopy(activation))
        c2_xavier_fill(pool_conv)
        self.convs.append(nn.Sequential(pool, pool_conv))

        self.project = Conv2d(
            5 * out_channels,
            out_channels,
            kernel_size=1,
            bias=use_bias,
            norm=get_norm(norm, out_channels),
            activation=deepcopy(activation),
        )
        c2_xavier_fill(self.project)

    @staticmethod
    def _atrous_branch(
        in_channels: int,
        out_channels: int,
        dilation: int,
        norm: str | Callable[[int], nn.Module] | None,
        activation: Callable[[Tensor], Tensor] | None,
        use_bias: bool,
        depthwise_separable: bool,
    ) -> nn.Module:
        if depthwise_separable:
            # DepthwiseSeparableConv2d applies its own (MSRA) initialization.
            return DepthwiseSeparableConv2d(
                in_channels,
                out_channels,
                kernel_size=3,
                padding=dilation,
                dilation=dilation,
                norm1=norm,
                activation1=deepcopy(activation),
                norm2=norm,
                activation2=deepcopy(activation),
            )
        conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            bias=use_bias,
            norm=get_norm(norm, out_channels),
            activation=deepcopy(activation),
        )
        c2_xavier_fill(conv)
        return conv

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        kernel = self.pool_kernel_size
        if kernel is not None and (size[0] % kernel[0] or size[1] % kernel[1]):
            raise ValueError(
                "ASPP: the input size must be divisible by pool_kernel_size; got input "
                f"size {tuple(size)} and pool_kernel_size {tuple(kernel)}"
            )
        branches = [conv(x) for conv in self.convs]
        branches[-1] = F.interpolate(branches[-1], size=size, mode="bilinear", align_corners=False)
        out = self.project(torch.cat(branches, dim=1))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, training=self.training)
        return out
