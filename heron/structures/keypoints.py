"""Keypoint annotations (`Keypoints`) and the heatmap encoding/decoding of Keypoint R-CNN.

Pixel model (Heckbert 1990, as Detectron2): a continuous coordinate c lies in the discrete
cell d = floor(c), and the centre of cell d is c = d + 0.5. Encoding and decoding use the
same model, so a keypoint survives a round trip up to the cell size.

Shapes:
    N: number of instances (or regions); K: keypoints per instance; S: heatmap side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["Keypoints", "export_region_bound", "heatmaps_to_keypoints"]


class Keypoints:
    """Keypoint annotations of the instances of one image.

    The visibility flag follows COCO: 0 not labeled (then x = y = 0), 1 labeled but not
    visible, 2 labeled and visible.

    Attributes:
        tensor: (N, K, 3) float32 (x, y, visibility), x and y in absolute pixels.
    """

    def __init__(self, keypoints: Tensor | np.ndarray | Sequence[Any]) -> None:
        """
        Args:
            keypoints: (N, K, 3) x, y, visibility, as a Tensor (its device is kept), an
                np.ndarray or nested lists.
        """
        device = keypoints.device if isinstance(keypoints, Tensor) else torch.device("cpu")
        keypoints = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
        if keypoints.dim() != 3 or keypoints.shape[2] != 3:
            raise ValueError(
                f"Keypoints: expected shape (N, K, 3) (x, y, visibility), "
                f"got {tuple(keypoints.shape)}"
            )
        self.tensor = keypoints

    def __len__(self) -> int:
        return self.tensor.size(0)

    def to(self, *args: Any, **kwargs: Any) -> Keypoints:
        """Return the keypoints converted by `Tensor.to` (e.g. to another device)."""
        return type(self)(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        """The device of the keypoint tensor."""
        return self.tensor.device

    def to_heatmap(self, boxes: Tensor, heatmap_size: int) -> tuple[Tensor, Tensor]:
        """Encode each keypoint as the index of its cell in an S x S grid over its box.

        This makes the Keypoint R-CNN training targets (one-hot over the S * S cells), with
        Detectron2's `_keypoints_to_heatmap` semantics.

        Args:
            boxes: (N, 4) XYXY boxes (Tensor or Boxes), absolute pixels; boxes[i] holds
                instance i.
            heatmap_size: side S of the grid.

        Returns:
            heatmaps: (N, K) int64 cell index y * S + x in [0, S * S), 0 where not valid.
            valid: (N, K) bool: the keypoint is labeled (visibility > 0) and inside its box.
        """
        if not isinstance(boxes, Tensor):
            boxes = boxes.tensor
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != len(self):
            raise ValueError(
                f"Keypoints.to_heatmap: boxes must be ({len(self)}, 4), one per instance, "
                f"got {tuple(boxes.shape)}"
            )
        return _keypoints_to_heatmap(self.tensor, boxes, heatmap_size)

    def __getitem__(self, item: int | slice | Tensor) -> Keypoints:
        """Select instances: an int gives Keypoints of length 1; also slices, bool masks and
        index tensors. The result may share storage with this object."""
        if isinstance(item, int):
            return Keypoints(self.tensor[item].unsqueeze(0))
        return Keypoints(self.tensor[item])

    def __repr__(self) -> str:
        return f"Keypoints(num_instances={len(self.tensor)})"

    @staticmethod
    def cat(keypoints_list: list[Keypoints]) -> Keypoints:
        """Concatenate a non-empty list of Keypoints with the same K."""
        if not isinstance(keypoints_list, (list, tuple)) or len(keypoints_list) == 0:
            raise ValueError("Keypoints.cat: expected a non-empty list of Keypoints")
        for i, kpts in enumerate(keypoints_list):
            if not isinstance(kpts, Keypoints):
                raise TypeError(f"Keypoints.cat: element {i} is a {type(kpts).__name__}")
        return type(keypoints_list[0])(torch.cat([k.tensor for k in keypoints_list], dim=0))


def _keypoints_to_heatmap(
    keypoints: Tensor, rois: Tensor, heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """Map keypoints in [x0, x1) x [y0, y1) of their box to cells of an S x S grid.

    A keypoint exactly on the right (bottom) edge goes to the last column (row) instead of
    falling outside; the arithmetic order is Detectron2's.

    Args:
        keypoints: (N, K, 3) x, y, visibility.
        rois: (N, 4) XYXY boxes.
        heatmap_size: S.

    Returns:
        (N, K) int64 cell indices (0 where invalid) and (N, K) bool validity.
    """
    num_keypoints = keypoints.shape[1]
    if rois.numel() == 0:
        empty = rois.new_zeros((0, num_keypoints), dtype=torch.int64)
        return empty, empty.to(torch.bool)
    offset_x = rois[:, 0][:, None]
    offset_y = rois[:, 1][:, None]
    scale_x = (heatmap_size / (rois[:, 2] - rois[:, 0]))[:, None]
    scale_y = (heatmap_size / (rois[:, 3] - rois[:, 1]))[:, None]

    x = keypoints[..., 0]
    y = keypoints[..., 1]
    x_boundary = x == rois[:, 2][:, None]
    y_boundary = y == rois[:, 3][:, None]

    x = ((x - offset_x) * scale_x).floor().long()
    y = ((y - offset_y) * scale_y).floor().long()
    x[x_boundary] = heatmap_size - 1
    y[y_boundary] = heatmap_size - 1

    valid_loc = (x >= 0) & (y >= 0) & (x < heatmap_size) & (y < heatmap_size)
    valid = valid_loc & (keypoints[..., 2] > 0)
    heatmaps = (y * heatmap_size + x) * valid
    return heatmaps, valid


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> Tensor:
    """Decode predicted heatmaps into keypoint positions and scores, as Detectron2 does.

    For each region, the S x S logits are resized bicubically (align_corners=False) to
    ceil(h) x ceil(w) pixels of the box (sides clamped to >= 1), and each keypoint is put
    at the centre of its arg-max cell: x = x0 + (col + 0.5) * w / ceil(w), likewise y.
    The score is a spatial softmax value at that cell, normalized by the sum over the
    S x S low-resolution map (not the resized one), so that regions of different sizes
    give comparable scores. The order of operations follows Detectron2's function of this
    name so that outputs agree.

    Args:
        maps: (N, K, S, S) heatmap logits.
        rois: (N, 4) XYXY boxes, absolute pixels; maps[i] covers rois[i].

    Returns:
        (N, K, 4): x, y (absolute pixels), the resized logit at the peak, and the score.
    """
    if maps.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 4 or rois.shape[0] != maps.shape[0]:
        raise ValueError(
            f"heatmaps_to_keypoints: need maps (N, K, S, S) and rois (N, 4) with the same N, "
            f"got {tuple(maps.shape)} and {tuple(rois.shape)}"
        )
    if torch.compiler.is_exporting():
        if _EXPORT_REGION_BOUND is None:
            raise RuntimeError(
                "heatmaps_to_keypoints under torch.export needs a bound on the regions per "
                "call: wrap the export in heron.structures.keypoints.export_region_bound(n)"
            )
        return _decode_heatmaps_unrolled(maps.detach(), rois.detach(), _EXPORT_REGION_BOUND)
    return _decode_heatmaps(maps.detach(), rois.detach())


# While torch.export captures `heatmaps_to_keypoints`: the most regions one call decodes
# (see `export_region_bound`); None otherwise.
_EXPORT_REGION_BOUND: int | None = None


@contextlib.contextmanager
def export_region_bound(bound: int) -> Iterator[None]:
    """Let torch.export capture `heatmaps_to_keypoints` for up to `bound` regions per call.

    torch.export cannot loop over a count that depends on the data, so while exporting
    the decoding is unrolled `bound` times (e.g. the model's detections per image), and the
    program checks at run time that no call gets more regions.
    """
    global _EXPORT_REGION_BOUND
    if not isinstance(bound, int) or bound < 1:
        raise ValueError(f"export_region_bound: bound must be a positive int, got {bound!r}")
    previous, _EXPORT_REGION_BOUND = _EXPORT_REGION_BOUND, bound
    try:
        yield
    finally:
        _EXPORT_REGION_BOUND = previous


def _region_geometry(rois: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per region: x0, y0, ceil(h), ceil(w), and the corrections h / ceil(h), w / ceil(w)."""
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil = widths.ceil()
    heights_ceil = heights.ceil()
    return (
        rois[:, 0],
        rois[:, 1],
        heights_ceil,
        widths_ceil,
        heights / heights_ceil,
        widths / widths_ceil,
    )


def _decode_region(
    maps: Tensor,
    outsize: list[int],
    offset_x: Tensor,
    offset_y: Tensor,
    height_correction: Tensor,
    width_correction: Tensor,
) -> Tensor:
    """Decode one region's (1, K, S, S) heatmap resized to `outsize`: (K, 4) x, y, logit, score."""
    num_keypoints = maps.shape[1]
    roi_map = F.interpolate(maps, size=outsize, mode="bicubic", align_corners=False)
    width = roi_map.size(3)
    roi_map = roi_map[0].reshape(num_keypoints, -1)  # (K, ceil(h) * ceil(w))

    # Softmax over space at full resolution, normalized over the S x S map.
    max_score = roi_map.max(1).values.view(num_keypoints, 1)
    tmp_full_resolution = (roi_map - max_score).exp()
    tmp_pool_resolution = (maps[0].reshape(num_keypoints, -1) - max_score).exp()
    roi_map_scores = tmp_full_resolution / tmp_pool_resolution.sum(1, keepdim=True)

    pos = roi_map.argmax(1, keepdim=True)  # (K, 1)
    x_int = pos % width
    y_int = torch.div(pos, width, rounding_mode="floor")
    x = (x_int.float() + 0.5) * width_correction + offset_x
    y = (y_int.float() + 0.5) * height_correction + offset_y
    logit = roi_map.gather(1, pos)
    score = roi_map_scores.gather(1, pos)
    return torch.cat([x, y, logit, score], dim=1)


@torch.jit.script_if_tracing
def _decode_heatmaps(maps: Tensor, rois: Tensor) -> Tensor:
    """The loop of `heatmaps_to_keypoints`, scripted when traced.

    Each region's heatmap is resized to its own box size, so regions are decoded one by one.
    Eager mode runs this Python as written; a trace (ONNX, TorchScript export) scripts it,
    so the exported loop runs over however many regions an image has, at their box sizes
    (an ONNX Loop).
    """
    offset_x, offset_y, heights_ceil, widths_ceil, height_corr, width_corr = _region_geometry(rois)
    rows: list[Tensor] = []
    for i in range(maps.shape[0]):
        outsize = [int(heights_ceil[i]), int(widths_ceil[i])]
        rows.append(
            _decode_region(
                maps[i : i + 1], outsize, offset_x[i], offset_y[i], height_corr[i], width_corr[i]
            )
        )
    if len(rows) == 0:
        return maps.new_zeros((0, maps.shape[1], 4))
    return torch.stack(rows)


def _decode_heatmaps_unrolled(maps: Tensor, rois: Tensor, bound: int) -> Tensor:
    """`_decode_heatmaps` for torch.export: `bound` unrolled steps, the first n kept.

    Step i decodes region min(i, n), where region n is a padding region (a 1 x 1 box), so
    every step is valid for any n <= bound; sizes are unbacked integers of the program.
    """
    num = maps.shape[0]
    torch._check(num <= bound, lambda: f"{num} regions exceed the exported bound {bound}")
    maps = torch.cat([maps, maps.new_zeros((1, *maps.shape[1:]))])
    rois = torch.cat([rois, rois.new_tensor([[0.0, 0.0, 1.0, 1.0]])])
    offset_x, offset_y, heights_ceil, widths_ceil, height_corr, width_corr = _region_geometry(rois)
    rows = []
    for i in range(bound):
        j = torch.sym_min(i, num)
        height, width = heights_ceil[j].long().item(), widths_ceil[j].long().item()
        torch._check(height >= 1)
        torch._check(width >= 1)
        rows.append(
            _decode_region(
                maps[j : j + 1],
                [height, width],
                offset_x[j],
                offset_y[j],
                height_corr[j],
                width_corr[j],
            )
        )
    return torch.stack(rows)[:num]
