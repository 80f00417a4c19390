"""Keypoint annotations (`Keypoints`) and the heatmap encoding/decoding of Keypoint R-CNN.

Pixel model (Heckbert 1990, as Detectron2): a continuous coordinate c lies in the discrete
cell d = floor(c), and the centre of cell d is c = d + 0.5. Encoding and decoding use the
same model, so a keypoint survives a round trip up to the cell size.

Shapes:
    N: number of instances (or regions); K: keypoints per instance; S: heatmap side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["Keypoints", "heatmaps_to_keypoints"]


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
    return _decode_heatmaps(maps.detach(), rois.detach())


@torch.jit.script_if_tracing
def _decode_heatmaps(maps: Tensor, rois: Tensor) -> Tensor:
    """The loop of `heatmaps_to_keypoints`, scripted when traced.

    Each region's heatmap is resized to its own box size, so regions are decoded one by one.
    Eager mode runs this Python as written; a trace (ONNX, TorchScript export) scripts it,
    so the exported loop runs over however many regions an image has, at their box sizes
    (an ONNX Loop).
    """
    offset_x = rois[:, 0]
    offset_y = rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil = widths.ceil()
    heights_ceil = heights.ceil()
    width_corrections = widths / widths_ceil
    height_corrections = heights / heights_ceil

    num_keypoints = maps.shape[1]
    rows: list[Tensor] = []
    for i in range(maps.shape[0]):
        outsize = [int(heights_ceil[i]), int(widths_ceil[i])]
        roi_map = F.interpolate(maps[i : i + 1], size=outsize, mode="bicubic", align_corners=False)
        width = roi_map.size(3)
        roi_map = roi_map[0].reshape(num_keypoints, -1)  # (K, ceil(h) * ceil(w))

        # Softmax over space at full resolution, normalized over the S x S map.
        max_score = roi_map.max(1).values.view(num_keypoints, 1)
        tmp_full_resolution = (roi_map - max_score).exp()
        tmp_pool_resolution = (maps[i].reshape(num_keypoints, -1) - max_score).exp()
        roi_map_scores = tmp_full_resolution / tmp_pool_resolution.sum(1, keepdim=True)

        pos = roi_map.argmax(1, keepdim=True)  # (K, 1)
        x_int = pos % width
        y_int = torch.div(pos, width, rounding_mode="floor")
        x = (x_int.float() + 0.5) * width_corrections[i] + offset_x[i]
        y = (y_int.float() + 0.5) * height_corrections[i] + offset_y[i]
        logit = roi_map.gather(1, pos)
        score = roi_map_scores.gather(1, pos)
        rows.append(torch.cat([x, y, logit, score], dim=1))
    if len(rows) == 0:
        return maps.new_zeros((0, num_keypoints, 4))
    return torch.stack(rows)
