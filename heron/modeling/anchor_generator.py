"""Anchor generators: reference boxes tiled over every feature-map location.

Anchors are placed exactly as Detectron2 places them (same cell-anchor arithmetic in
Python floats, same grid offsets and ordering: location-major, then cell anchor), so
proposals and detections match its numbers.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from heron.config.config import CfgNode, configurable
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import move_device_like
from heron.structures.boxes import Boxes
from heron.structures.rotated_boxes import RotatedBoxes
from heron.utils.registry import Registry

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BufferList",
    "DefaultAnchorGenerator",
    "RotatedAnchorGenerator",
    "build_anchor_generator",
]

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """
Registry for anchor generators, called as ``obj(cfg, input_shape: list[ShapeSpec])``.
"""


class BufferList(nn.Module):
    """A list of tensors kept as non-persistent buffers (they move with the module but
    are not saved in the state_dict, as in Detectron2)."""

    def __init__(self, buffers: list[Tensor]) -> None:
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


def _broadcast_params(params: Any, num_features: int, name: str) -> list:
    """Per-level lists from a config value given once for all levels or once per level.

    ``[32, 64]`` -> the same list for every level; ``[[32], [64], ...]`` -> one per level.
    """
    if not isinstance(params, Sequence) or isinstance(params, str) or len(params) == 0:
        raise ValueError(f"anchor generator {name} must be a non-empty list, got {params!r}")
    if not isinstance(params[0], Sequence):
        return [params] * num_features
    if len(params) == 1:
        return list(params) * num_features
    if len(params) != num_features:
        raise ValueError(
            f"anchor generator {name} has {len(params)} entries for {num_features} feature maps"
        )
    return list(params)


def _grid_offsets(
    grid_size: Sequence[int], stride: int, offset: float, like: Tensor
) -> tuple[Tensor, Tensor]:
    """(H*W,) x and y coordinates of every cell's anchor centre, row-major."""
    # no int(): a traced or symbolic size must stay one, so that anchors follow the input
    grid_height, grid_width = grid_size[0], grid_size[1]
    shifts_x = move_device_like(
        torch.arange(
            offset * stride,
            grid_width * stride,
            step=stride,
            dtype=torch.float32,
            device=like.device,
        ),
        like,
    )
    shifts_y = move_device_like(
        torch.arange(
            offset * stride,
            grid_height * stride,
            step=stride,
            dtype=torch.float32,
            device=like.device,
        ),
        like,
    )
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


class _GridAnchorGenerator(nn.Module, metaclass=ABCMeta):
    """Shared machinery: per-level cell anchors (non-persistent buffers) shifted to every
    feature-map location, location-major then cell anchor, as Detectron2 orders them."""

    box_dim: int
    _box_type: type

    def _init_grid(self, strides: Sequence[int], offset: float) -> None:
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        self.strides = list(strides)
        self.num_features = len(self.strides)
        self.offset = offset

    @property
    def num_cell_anchors(self) -> list[int]:
        """Alias of `num_anchors` (Detectron2 keeps both names)."""
        return self.num_anchors

    @property
    def num_anchors(self) -> list[int]:
        """Anchors per location, for each feature map."""
        return [len(cell) for cell in self.cell_anchors]

    @abstractmethod
    def _shifts(self, shift_x: Tensor, shift_y: Tensor) -> Tensor:
        """(H*W, box_dim) offsets that move a cell anchor to each location."""

    def _grid_anchors(self, grid_sizes: list[Sequence[int]]) -> list[Tensor]:
        anchors = []
        dim = self.box_dim
        for size, stride, base in zip(grid_sizes, self.strides, self.cell_anchors):
            shifts = self._shifts(*_grid_offsets(size, stride, self.offset, base))
            # (H*W, 1, D) + (1, A, D) -> (H*W*A, D), location-major.
            anchors.append((shifts.view(-1, 1, dim) + base.view(1, -1, dim)).reshape(-1, dim))
        return anchors

    def forward(self, features: list[Tensor]) -> list:
        """L feature maps (N, C, Hi, Wi) -> L box sets of Hi * Wi * A anchors each."""
        grid_sizes = [f.shape[-2:] for f in features]
        return [self._box_type(a) for a in self._grid_anchors(grid_sizes)]


class DefaultAnchorGenerator(_GridAnchorGenerator):
    """Axis-aligned anchors of several sizes and aspect ratios at every location.

    forward: list of L (N, C, Hi, Wi) feature maps -> list of L `Boxes` with
    Hi * Wi * A anchors each, XYXY in input-image pixels.
    """

    box_dim: int = 4
    _box_type = Boxes

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] | Sequence[float],
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float],
        strides: Sequence[int],
        offset: float = 0.5,
    ) -> None:
        """
        Args:
            sizes: anchor sizes (sqrt of area, pixels) per level, or one list for all levels.
            aspect_ratios: height / width ratios per level, or one list for all.
            strides: stride of each feature map.
            offset: anchor centre offset in units of stride; 0 puts the first centre at the
                image's top-left corner, 0.5 at the first cell's centre.
        """
        super().__init__()
        self._init_grid(strides, offset)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        self.cell_anchors = BufferList(
            [self.generate_cell_anchors(s, a).float() for s, a in zip(sizes, aspect_ratios)]
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [x.stride for x in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    def generate_cell_anchors(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1, 2),
    ) -> Tensor:
        """(len(sizes) * len(aspect_ratios), 4) XYXY anchors centred at (0, 0).

        For size s and ratio r = h / w: w = sqrt(s^2 / r), h = r * w; size-major order.
        """
        anchors = []
        for size in sizes:
            area = size**2.0
            for ratio in aspect_ratios:
                w = math.sqrt(area / ratio)
                h = ratio * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors)

    def _shifts(self, shift_x: Tensor, shift_y: Tensor) -> Tensor:
        return torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)


class RotatedAnchorGenerator(_GridAnchorGenerator):
    """Rotated anchors (cx, cy, w, h, angle) of several sizes, ratios and angles.

    forward: list of L feature maps -> list of L `RotatedBoxes` with Hi * Wi * A anchors.
    """

    box_dim: int = 5
    _box_type = RotatedBoxes

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] | Sequence[float],
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float],
        strides: Sequence[int],
        angles: Sequence[Sequence[float]] | Sequence[float],
        offset: float = 0.5,
    ) -> None:
        """As `DefaultAnchorGenerator`, plus ``angles`` (degrees) per level or for all."""
        super().__init__()
        self._init_grid(strides, offset)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        angles = _broadcast_params(angles, self.num_features, "angles")
        self.cell_anchors = BufferList(
            [
                self.generate_cell_anchors(s, a, t).float()
                for s, a, t in zip(sizes, aspect_ratios, angles)
            ]
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [x.stride for x in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
            "angles": cfg.MODEL.ANCHOR_GENERATOR.ANGLES,
        }

    def generate_cell_anchors(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1, 2),
        angles: Sequence[float] = (-90, -60, -30, 0, 30, 60, 90),
    ) -> Tensor:
        """(S * R * T, 5) anchors (0, 0, w, h, angle); size-major, then ratio, then angle."""
        anchors = []
        for size in sizes:
            area = size**2.0
            for ratio in aspect_ratios:
                w = math.sqrt(area / ratio)
                h = ratio * w
                anchors.extend([0, 0, w, h, angle] for angle in angles)
        return torch.tensor(anchors)

    def _shifts(self, shift_x: Tensor, shift_y: Tensor) -> Tensor:
        zeros = torch.zeros_like(shift_x)
        return torch.stack((shift_x, shift_y, zeros, zeros, zeros), dim=1)


ANCHOR_GENERATOR_REGISTRY.register(DefaultAnchorGenerator)
ANCHOR_GENERATOR_REGISTRY.register(RotatedAnchorGenerator)


def build_anchor_generator(cfg: CfgNode, input_shape: list[ShapeSpec]) -> nn.Module:
    """The anchor generator named by ``cfg.MODEL.ANCHOR_GENERATOR.NAME``."""
    return ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shape)
