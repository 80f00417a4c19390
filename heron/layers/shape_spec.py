"""`ShapeSpec`: the shape of a feature map, passed between model components."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    """Channels, spatial size and stride of a tensor, any of which may be unknown (None).

    Backbones describe their outputs with it and heads size their layers from it, so
    that a head can be built before any image has been seen.

    Attributes:
        channels: number of channels C.
        height: spatial height H, or None when it depends on the input.
        width: spatial width W, or None when it depends on the input.
        stride: ratio of the input image size to this feature map's size.
    """

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None
