"""Inputs of the visualizer in the forms it draws: masks, panoptic maps and text labels.

`GenericMask` converts one instance mask between polygons, a binary mask and an RLE;
`connected_components` labels mask components (for text placement); `_PanopticPrediction`
reads panoptic id maps; `_create_text_labels` makes "class score%" labels. Split from
`heron.utils.visualizer`, which re-exports `GenericMask` (Detectron2's path).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import contourpy
import numpy as np
import pycocotools.mask as mask_util
import torch

__all__ = ["GenericMask", "connected_components"]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _rle_counts_as_bytes(rle: dict) -> dict:
    # pycocotools wants compressed counts as bytes; JSON files hold them as str.
    if isinstance(rle["counts"], str):
        return {**rle, "counts": rle["counts"].encode("ascii")}
    return rle


class GenericMask:
    """One instance mask, held as polygons, a binary mask or an RLE, converted on demand.

    Attributes:
        polygons: list of (2P,) float arrays [x0, y0, x1, y1, ...], continuous pixel
            coordinates. Computed from a mask, they trace the pixel borders (outer borders and
            hole borders alike), as Detectron2's contours do.
        mask: (H, W) uint8 binary mask.
        has_holes: whether the mask has a hole (always False for polygon input).
    """

    def __init__(self, mask_or_polygons: Any, height: int, width: int) -> None:
        self._mask: np.ndarray | None = None
        self._polygons: list[np.ndarray] | None = None
        self._has_holes: bool | None = None
        self.height = int(height)
        self.width = int(width)
        m = mask_or_polygons
        if isinstance(m, dict):  # COCO RLE
            if "counts" not in m or "size" not in m:
                raise ValueError(f"an RLE mask needs keys 'counts' and 'size', got {sorted(m)}")
            if isinstance(m["counts"], list):  # uncompressed RLE
                h, w = m["size"]
                if (h, w) != (self.height, self.width):
                    raise ValueError(
                        f"RLE size {(h, w)} does not match the image ({self.height}, {self.width})"
                    )
                m = mask_util.frPyObjects(m, h, w)
            self._mask = mask_util.decode(_rle_counts_as_bytes(m))[:, :]
            return
        if isinstance(m, list):  # polygons
            self._polygons = [np.asarray(p, dtype=np.float64).reshape(-1) for p in m]
            return
        if isinstance(m, torch.Tensor):
            m = m.detach().cpu().numpy()
        if isinstance(m, np.ndarray):
            if m.shape != (self.height, self.width):
                raise ValueError(
                    f"binary mask shape {m.shape} does not match the image "
                    f"({self.height}, {self.width})"
                )
            self._mask = m.astype(np.uint8)
            return
        raise TypeError(
            "GenericMask takes an RLE dict, a list of polygons or an (H, W) array, "
            f"got {type(m).__name__}"
        )

    @property
    def mask(self) -> np.ndarray:
        """(H, W) uint8 binary mask, rasterized from the polygons if needed."""
        if self._mask is None:
            self._mask = self.polygons_to_mask(self._polygons)
        return self._mask

    @property
    def polygons(self) -> list[np.ndarray]:
        """Polygons [x0, y0, ...], traced from the mask if needed."""
        if self._polygons is None:
            self._polygons, self._has_holes = self.mask_to_polygons(self._mask)
        return self._polygons

    @property
    def has_holes(self) -> bool:
        """Whether the mask has a hole (False for polygon input)."""
        if self._has_holes is None:
            if self._mask is not None:
                self._polygons, self._has_holes = self.mask_to_polygons(self._mask)
            else:
                self._has_holes = False  # polygons given: holes are not represented
        return self._has_holes

    def mask_to_polygons(self, mask: np.ndarray) -> tuple[list[np.ndarray], bool]:
        """Trace the borders of a binary mask.

        The 0.5 level set of the zero-padded mask runs along pixel borders (cutting each
        corner by half a pixel), so the polygons enclose the set pixels. Detectron2 traces
        pixel centers with OpenCV and shifts them by 0.5 instead; both give every outer and
        hole border of each component.

        Returns:
            polygons: list of (2P,) arrays, P >= 3, [x0, y0, ...] in continuous pixels.
            has_holes: whether any component has a hole.
        """
        padded = np.pad(np.asarray(mask) > 0, 1).astype(np.float64)
        h, w = padded.shape
        # Padded pixel (i, j) is image pixel (i - 1, j - 1), whose center is (j - 0.5, i - 0.5).
        gen = contourpy.contour_generator(
            np.arange(w) - 0.5,
            np.arange(h) - 0.5,
            padded,
            fill_type=contourpy.FillType.OuterOffset,
        )
        points_list, offsets_list = gen.filled(0.5, 1.5)
        polygons, has_holes = [], False
        for points, offsets in zip(points_list, offsets_list):
            has_holes |= len(offsets) > 2  # an outer ring plus at least one hole ring
            for start, end in itertools.pairwise(offsets):
                ring = points[start : end - 1]  # drop the closing point
                if len(ring) >= 3:
                    polygons.append(ring.reshape(-1).astype(np.float64))
        return polygons, bool(has_holes)

    def polygons_to_mask(self, polygons: list[np.ndarray]) -> np.ndarray:
        """Rasterize polygons with pycocotools into an (H, W) uint8 mask."""
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return np.zeros((self.height, self.width), dtype=np.uint8)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, self.height, self.width))
        return mask_util.decode(rle)[:, :]

    def area(self) -> int:
        """Number of pixels in the mask."""
        return int(self.mask.sum())

    def bbox(self) -> np.ndarray:
        """(4,) XYXY bounding box of the rasterized polygons (zeros if there are none)."""
        polygons = [p for p in self.polygons if len(p) >= 6]
        if not polygons:
            return np.zeros(4, dtype=np.float64)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, self.height, self.width))
        box = mask_util.toBbox(rle).astype(np.float64)
        box[2] += box[0]
        box[3] += box[1]
        return box


def connected_components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Label the 8-connected components of a binary mask.

    Row runs of set pixels are joined with union-find when they touch (diagonals included).

    Args:
        mask: (H, W) binary mask.

    Returns:
        num: number of labels including background 0, so components are 1..num - 1.
        labels: (H, W) int32 label image.
        areas: (num,) int64 pixel counts; areas[0] counts the background.
    """
    m = np.asarray(mask) > 0
    height, width = m.shape
    edges = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)  # (H, W + 1)
    rows, starts = np.nonzero(edges == 1)  # run [start, end) in row-major order
    _, ends = np.nonzero(edges == -1)
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows, np.arange(height + 1))  # first run index of each row
    for r in range(1, height):
        a, a_end = row_first[r - 1], row_first[r]  # runs of the previous row
        b, b_end = row_first[r], row_first[r + 1]
        while a < a_end and b < b_end:
            # 8-connectivity: runs touch if they overlap once widened by one column.
            if starts[a] <= ends[b] and starts[b] <= ends[a]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    labels = np.zeros((height, width), dtype=np.int32)
    root_label: dict[int, int] = {}
    for i in range(len(rows)):
        label = root_label.setdefault(find(i), len(root_label) + 1)
        labels[rows[i], starts[i] : ends[i]] = label
    num = len(root_label) + 1
    areas = np.bincount(labels.reshape(-1), minlength=num).astype(np.int64)
    return num, labels, areas


class _PanopticPrediction:
    """Unifies panoptic formats: an id map plus segments_info, or an id map alone."""

    def __init__(self, panoptic_seg: Any, segments_info: list[dict] | None, metadata: Any) -> None:
        seg = torch.as_tensor(_to_numpy(panoptic_seg).astype(np.int64))
        if segments_info is None:
            # Ids are category_id * label_divisor + instance_id; -1 is void.
            label_divisor = _require(metadata, "label_divisor", "segments_info=None")
            thing_ids = set(_require(metadata, "thing_dataset_id_to_contiguous_id", "").values())
            segments_info = []
            for pan_id in torch.unique(seg).tolist():
                if pan_id == -1:
                    continue
                category = pan_id // label_divisor
                segments_info.append(
                    {"id": pan_id, "category_id": category, "isthing": category in thing_ids}
                )
        self._seg = seg
        self._sinfo = {s["id"]: dict(s) for s in segments_info}
        seg_ids, areas = torch.unique(seg, sorted=True, return_counts=True)
        order = np.argsort(-areas.numpy(), kind="stable")
        self._seg_ids = seg_ids[order].tolist()
        self._seg_areas = areas.numpy()[order]
        for sid, area in zip(self._seg_ids, self._seg_areas):
            if sid in self._sinfo:
                self._sinfo[sid]["area"] = float(area)

    def non_empty_mask(self) -> np.ndarray:
        """(H, W) bool: pixels that belong to a described segment."""
        empty_ids = [sid for sid in self._seg_ids if sid not in self._sinfo]
        if not empty_ids:
            return np.ones(tuple(self._seg.shape), dtype=bool)
        if len(empty_ids) > 1:
            raise ValueError(
                f"panoptic_seg holds {len(empty_ids)} ids missing from segments_info "
                f"({empty_ids[:5]}); at most one (void) is supported"
            )
        return (self._seg != empty_ids[0]).numpy()

    def semantic_masks(self) -> Iterator[tuple[np.ndarray, dict]]:
        for sid in self._seg_ids:
            sinfo = self._sinfo.get(sid)
            if sinfo is not None and not sinfo["isthing"]:
                yield (self._seg == sid).numpy(), sinfo

    def instance_masks(self) -> Iterator[tuple[np.ndarray, dict]]:
        for sid in self._seg_ids:
            sinfo = self._sinfo.get(sid)
            if sinfo is not None and sinfo["isthing"]:
                mask = (self._seg == sid).numpy()
                if mask.any():
                    yield mask, sinfo


def _require(metadata: Any, key: str, purpose: str) -> Any:
    value = getattr(metadata, key, None)
    if value is None:
        why = f" (needed for {purpose})" if purpose else ""
        raise KeyError(f"metadata has no {key!r}{why}")
    return value


def _create_text_labels(
    classes: Sequence[int] | None,
    scores: Sequence[float] | None,
    class_names: Sequence[str] | None,
    is_crowd: Sequence[bool] | None = None,
) -> list[str] | None:
    """Make labels "name 97%" (class name, or its index without names; score rounded)."""
    labels = None
    if classes is not None:
        if class_names:
            labels = [class_names[int(i)] for i in classes]
        else:
            labels = [str(int(i)) for i in classes]
    if scores is not None:
        pcts = [f"{float(s) * 100:.0f}%" for s in scores]
        labels = pcts if labels is None else [f"{lb} {p}" for lb, p in zip(labels, pcts)]
    if labels is not None and is_crowd is not None:
        labels = [lb + ("|crowd" if crowd else "") for lb, crowd in zip(labels, is_crowd)]
    return labels
