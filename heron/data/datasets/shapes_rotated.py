"""The shapes dataset with rotated boxes: each shape's minimum-area enclosing rectangle.

The images and annotations are those of `heron.data.datasets.shapes` (same splits, sizes
and seeds as "shapes_train"/"shapes_val"); only ``bbox`` changes. It becomes the smallest
rectangle, at any angle, that holds the shape's polygon, in Detectron2's XYWHA_ABS form
(cx, cy, w, h, angle): centre in absolute pixels, the width measured along the direction
``angle`` degrees counter-clockwise from the +x axis as seen on screen (image y points down,
so that direction is (cos a, -sin a)), and the height along (sin a, cos a).

A rectangle has four XYWHA names: (w, h, a), (h, w, a + 90), (w, h, a + 180) and
(h, w, a + 270). This module gives the one with angle in [-45, 45), the least rotation away
from an axis-aligned box, so near-upright shapes get near-zero angles (the ones
`RotatedBoxes.clip` treats as horizontal) and squares get their smallest tilt.

The minimum rectangle comes from the convex hull (Andrew's monotone chain) and the
rotating-calipers theorem: some side of a minimum-area enclosing rectangle lies along an
edge of the hull, so trying the rectangle aligned with each hull edge finds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from heron.data.datasets.shapes import generate_shapes_dataset, get_shapes_metadata
from heron.structures.boxes import BoxMode

__all__ = [
    "convex_hull",
    "load_shapes_rotated_json",
    "min_area_rotated_box",
    "register_shapes_rotated",
]

# name -> (split folder of the shapes dataset, number of images, seed): shapes.py's values
_SPLITS = {"shapes_rotated_train": ("train", 200, 0), "shapes_rotated_val": ("val", 50, 1)}


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Return the convex hull of 2-D points, counter-clockwise in (x, y) axes.

    Andrew's monotone chain; collinear points on the hull's edges and duplicates are left out.

    Args:
        points: (P, 2) float points (x, y).

    Returns:
        (H, 2) float64 hull vertices, H <= P. H is 1 for a single distinct point and 2 for
        distinct points on one line (the segment's ends).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"points must be (P, 2) with P >= 1, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points must be finite")
    pts = np.unique(points, axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts

    def half(sequence: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in sequence:
            # Pop while the last turn is not strictly left (cross product <= 0).
            while len(chain) >= 2:
                o, a = chain[-2], chain[-1]
                if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    hull = np.array(lower[:-1] + upper[:-1])
    return hull


def min_area_rotated_box(points: np.ndarray) -> np.ndarray:
    """Return the minimum-area rectangle holding ``points`` as (cx, cy, w, h, angle).

    Args:
        points: (P, 2) float points (x, y), image pixels (y down).

    Returns:
        (5,) float64: centre, width along (cos a, -sin a), height along (sin a, cos a),
        angle a in degrees in [-45, 45) (see the module docstring). A degenerate input gives
        zero sides: one distinct point has w = h = 0; points on a line give h or w = 0.
    """
    hull = convex_hull(points)
    if len(hull) == 1:
        return np.array([hull[0, 0], hull[0, 1], 0.0, 0.0, 0.0])
    edges = np.roll(hull, -1, axis=0) - hull  # (H, 2); for H == 2 both directions of the line
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    axis_u = edges / lengths[:, None]  # (H, 2) unit edge directions
    axis_v = np.stack([-axis_u[:, 1], axis_u[:, 0]], axis=1)  # perpendicular
    proj_u = axis_u @ hull.T  # (H, H): coordinate of each hull vertex along each edge
    proj_v = axis_v @ hull.T
    extent_u = proj_u.max(axis=1) - proj_u.min(axis=1)
    extent_v = proj_v.max(axis=1) - proj_v.min(axis=1)
    best = int(np.argmin(extent_u * extent_v))  # first minimum: deterministic on ties
    mid_u = (proj_u[best].max() + proj_u[best].min()) / 2
    mid_v = (proj_v[best].max() + proj_v[best].min()) / 2
    center = mid_u * axis_u[best] + mid_v * axis_v[best]
    ux, uy = axis_u[best]
    # The width axis is (cos a, -sin a) in image coordinates.
    angle = float(np.degrees(np.arctan2(-uy, ux)))
    w, h = float(extent_u[best]), float(extent_v[best])
    # Turning the name by 90 degrees swaps the sides: the axis at a - 90 is (sin a, cos a),
    # the old height axis. Bring the angle into [-45, 45).
    turns = np.floor((angle + 45.0) / 90.0)
    angle -= 90.0 * turns
    if int(turns) % 2:
        w, h = h, w
    if angle >= 45.0:  # float rounding at the upper end
        angle, w, h = angle - 90.0, h, w
    return np.array([center[0], center[1], w, h, angle])


def _rotated_box_of(annotation: dict[str, Any], index: int, record: dict[str, Any]) -> list[float]:
    segmentation = annotation.get("segmentation")
    if not isinstance(segmentation, list) or not segmentation:
        raise ValueError(
            f"annotation {index} of image {record.get('file_name')!r} needs "
            f"polygon 'segmentation' for its rotated box, got {type(segmentation).__name__}"
        )
    points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segmentation])
    return [float(v) for v in min_area_rotated_box(points)]


def load_shapes_rotated_json(
    json_file: str, image_root: str, dataset_name: str | None = None
) -> list[dict[str, Any]]:
    """Load a shapes COCO json with every ``bbox`` replaced by its polygon's minimum
    rotated rectangle (``bbox_mode`` BoxMode.XYWHA_ABS).

    Args:
        json_file, image_root, dataset_name: as `load_coco_json`.

    Returns:
        Detectron2 dataset dicts; the other annotation fields (segmentation, keypoints,
        category_id) are kept.
    """
    from heron.data.datasets.coco import load_coco_json

    records = load_coco_json(json_file, image_root, dataset_name)
    for record in records:
        for k, annotation in enumerate(record["annotations"]):
            annotation["bbox"] = _rotated_box_of(annotation, k, record)
            annotation["bbox_mode"] = BoxMode.XYWHA_ABS
    return records


def register_shapes_rotated(root: str | None = None) -> None:
    """Register "shapes_rotated_train" (200 images) and "shapes_rotated_val" (50).

    They share the folders of "shapes_train"/"shapes_val" under ``<root>/shapes/``; the
    first `DatasetCatalog.get(name)` generates the split there (or reuses it). Metadata
    has ``evaluator_type`` "rotated_coco" and no ``json_file``, so `RotatedCOCOEvaluator`
    builds its ground truth from these rotated dicts rather than the axis-aligned json.

    Args:
        root: datasets folder; default $HERON_DATASETS, else "./datasets".
    """
    from heron.data.catalog import DatasetCatalog, MetadataCatalog

    if root is None:
        root = os.environ.get("HERON_DATASETS", "datasets")
    base = os.path.join(os.path.expanduser(root), "shapes")
    meta = get_shapes_metadata()
    for name, (split, num_images, seed) in _SPLITS.items():
        DatasetCatalog.register(name, _make_loader(base, name, split, num_images, seed))
        MetadataCatalog.get(name).set(
            image_root=os.path.join(base, split, "images"),
            evaluator_type="rotated_coco",
            thing_classes=meta["thing_classes"],
            thing_colors=meta["thing_colors"],
        )


def _make_loader(
    base: str, name: str, split: str, num_images: int, seed: int
) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        info = generate_shapes_dataset(base, num_images=num_images, seed=seed, split=split)
        return load_shapes_rotated_json(info["json_file"], info["image_root"], name)

    return load
