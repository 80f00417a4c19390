"""The `Backbone` base class: a feature extractor with named, strided outputs."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from torch import Tensor, nn

from heron.layers.shape_spec import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """Abstract base of all backbones.

    Subclasses fill ``_out_features`` (names, in order), ``_out_feature_channels`` and
    ``_out_feature_strides`` (name -> int), and implement ``forward``.
    """

    def __init__(self) -> None:
        super().__init__()

    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Map an (N, C, H, W) image batch to a dict of feature maps keyed by name."""

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded so that H and W are multiples of this (0: no constraint).

        FPN-like backbones need it so that top-down upsampling lines up with laterals.
        """
        return 0

    @property
    def padding_constraints(self) -> dict[str, int]:
        """Extra padding rules for `ImageList.from_tensors`.

        May hold ``"size_divisibility"`` (overrides the property above) and
        ``"square_size"`` (pad every image to this square when > 0).
        """
        return {}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every output feature, keyed by name."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }
