"""`ROIPooler`: pool a fixed-size feature for every box from the right pyramid level.

Shapes:
    L: pyramid levels; N: images; R: boxes over the batch; C: channels; S: output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from heron.layers.roi_align import ROIAlign, ROIPool
from heron.layers.roi_align_rotated import ROIAlignRotated
from heron.layers.wrappers import nonzero_tuple
from heron.structures.boxes import Boxes
from heron.structures.rotated_boxes import RotatedBoxes

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]

_POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIPool", "ROIAlignRotated")


def assign_boxes_to_levels(
    box_lists: list[Boxes | RotatedBoxes],
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> Tensor:
    """Pyramid level of every box by Eqn. (1) of the FPN paper.

    level = floor(canonical_level + log2(sqrt(area) / canonical_box_size)), clamped to
    [min_level, max_level]. A box of the canonical size (224 px) goes to the canonical
    level (4).

    Returns:
        (R,) int64 level index minus min_level, i.e. an index into the pooled levels.
    """
    box_sizes = torch.sqrt(torch.cat([boxes.area() for boxes in box_lists]))
    # The 1e-8 keeps a box of exactly the canonical size from flooring one level down.
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: list[Boxes | RotatedBoxes]) -> Tensor:
    """Concatenate per-image boxes into (R, 1 + box_dim) rows [image index, box...]."""
    # The index column is built from each image's boxes, not from their counts, so that
    # traced and exported graphs keep the counts dynamic.
    rows = [
        torch.cat([torch.full_like(b.tensor[:, :1], i), b.tensor], dim=1)
        for i, b in enumerate(box_lists)
    ]
    return torch.cat(rows, dim=0)


class ROIPooler(nn.Module):
    """Pools (R, C, S, S) region features from one or several feature maps."""

    def __init__(
        self,
        output_size: int | Sequence[int],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        """
        Args:
            output_size: S, or (S_h, S_w).
            scales: 1 / stride of each input feature map, finest first, strides powers of 2.
            sampling_ratio: samples per bin side for ROIAlign (0: adaptive).
            pooler_type: "ROIAlign" (legacy, no half-pixel shift), "ROIAlignV2" (aligned),
                "ROIPool" or "ROIAlignRotated".
            canonical_box_size, canonical_level: the FPN level-assignment anchor point.
        """
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2:
            raise ValueError(f"ROIPooler output_size must be an int or a pair, got {output_size}")
        self.output_size = tuple(int(s) for s in output_size)
        if pooler_type not in _POOLER_TYPES:
            raise ValueError(f"Unknown pooler_type {pooler_type!r}; known: {list(_POOLER_TYPES)}")
        if pooler_type == "ROIAlign":
            poolers = [ROIAlign(self.output_size, s, sampling_ratio, aligned=False) for s in scales]
        elif pooler_type == "ROIAlignV2":
            poolers = [ROIAlign(self.output_size, s, sampling_ratio, aligned=True) for s in scales]
        elif pooler_type == "ROIPool":
            poolers = [ROIPool(self.output_size, spatial_scale=s) for s in scales]
        else:
            poolers = [ROIAlignRotated(self.output_size, s, sampling_ratio) for s in scales]
        self.level_poolers = nn.ModuleList(poolers)

        min_level = -math.log2(scales[0])
        max_level = -math.log2(scales[-1])
        if not (
            math.isclose(min_level, round(min_level)) and math.isclose(max_level, round(max_level))
        ):
            raise ValueError(f"ROIPooler scales must be powers of 1/2, got {list(scales)}")
        self.min_level, self.max_level = round(min_level), round(max_level)
        if len(scales) != self.max_level - self.min_level + 1:
            raise ValueError(f"ROIPooler scales must be consecutive levels, got {list(scales)}")
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be > 0, got {canonical_box_size}")
        self.canonical_level = canonical_level
        self.canonical_box_size = canonical_box_size

    def forward(self, x: list[Tensor], box_lists: list[Boxes | RotatedBoxes]) -> Tensor:
        """
        Args:
            x: L feature maps (N, C, Hl, Wl), finest first, matching ``scales``.
            box_lists: N box sets in input-image pixels, one per image.

        Returns:
            (R, C, S_h, S_w) pooled features, boxes in the order of the concatenated lists.
        """
        if not isinstance(x, list) or not isinstance(box_lists, list):
            raise TypeError("ROIPooler takes a list of feature maps and a list of box sets")
        if len(x) != len(self.level_poolers):
            raise ValueError(
                f"ROIPooler has {len(self.level_poolers)} levels but got {len(x)} feature maps"
            )
        if len(box_lists) != x[0].size(0):
            raise ValueError(
                f"ROIPooler got {len(box_lists)} box lists for a batch of {x[0].size(0)} images"
            )
        channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, channels, *self.output_size))
        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], pooler_fmt_boxes)

        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        # size(0) rather than len(): under tracing the number of regions stays dynamic
        output = x[0].new_zeros((pooler_fmt_boxes.size(0), channels, *self.output_size))
        for level, pooler in enumerate(self.level_poolers):
            idxs = nonzero_tuple(levels == level)[0]
            output.index_put_((idxs,), pooler(x[level], pooler_fmt_boxes[idxs]))
        return output
