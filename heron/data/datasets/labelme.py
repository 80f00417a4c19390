"""Read LabelMe JSON annotations (one json per image) into Detectron2 dataset dicts.

Supported shape types: "polygon", "rectangle" (two corners -> box and 4-point polygon) and
"circle" (center and a point on the edge -> polygon). Detectron2 has no LabelMe loader; the
names here follow its other loaders.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.structures.boxes import BoxMode
from heron.utils.file_io import PathManager

__all__ = ["load_labelme", "register_labelme"]

logger = logging.getLogger(__name__)

# Number of vertices of the polygon that approximates a "circle" shape.
CIRCLE_VERTICES = 32


def _read(json_file: str) -> dict:
    with PathManager.open(json_file, "r") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("imagePath", "imageHeight", "imageWidth", "shapes") if k not in data]
    if missing:
        raise ValueError(f"{json_file}: missing required key(s) {missing}")
    return data


def _points(shape: dict, where: str, count: int | None) -> list[tuple[float, float]]:
    pts = shape.get("points")
    if not isinstance(pts, list) or not all(isinstance(p, list) and len(p) == 2 for p in pts):
        raise ValueError(f"{where}: 'points' must be a list of [x, y] pairs, got {pts!r}")
    if count is not None and len(pts) != count:
        raise ValueError(f"{where}: expected {count} points, got {len(pts)}")
    return [(float(x), float(y)) for x, y in pts]


def _shape_to_polygon(shape: dict, where: str) -> list[float]:
    """Return the shape as a flat polygon [x0, y0, x1, y1, ...] in absolute pixels."""
    kind = shape.get("shape_type", "polygon")
    if kind == "polygon":
        pts = _points(shape, where, None)
        if len(pts) < 3:
            raise ValueError(f"{where}: a polygon needs at least 3 points, got {len(pts)}")
    elif kind == "rectangle":
        (xa, ya), (xb, yb) = _points(shape, where, 2)
        x0, x1, y0, y1 = min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb)
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    else:  # circle; the caller has checked the type
        (cx, cy), (ex, ey) = _points(shape, where, 2)
        r = math.hypot(ex - cx, ey - cy)
        angles = (2 * math.pi * i / CIRCLE_VERTICES for i in range(CIRCLE_VERTICES))
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
    return [v for p in pts for v in p]


def _collect_class_names(files: list[tuple[str, dict]]) -> list[str]:
    return sorted({str(s.get("label")) for _, data in files for s in data["shapes"]})


def load_labelme(
    json_dir: str, class_names: Sequence[str] | None = None, *, skip_unsupported: bool = False
) -> list[dict]:
    """Load a directory of LabelMe json files into Detectron2 dataset dicts.

    Args:
        json_dir: directory of "*.json" files (not searched recursively); each file's
            ``imagePath`` is relative to the json file.
        class_names: class names; ``category_id`` is the index of a shape's label here. If
            None, the sorted set of all labels in the directory is used.
        skip_unsupported: skip shapes whose ``shape_type`` is not polygon, rectangle or
            circle (the count is logged) instead of raising.

    Returns:
        One dict per json sorted by file name, ``image_id`` the json's stem, boxes in
        ``BoxMode.XYXY_ABS`` (the polygon's bounds) and polygon ``segmentation``.

    Raises:
        ValueError: malformed json, an unsupported shape type, or a label not in
            ``class_names``; the message names the file and the shape index.
    """
    json_dir = os.fspath(json_dir)
    names = sorted(f for f in os.listdir(json_dir) if f.endswith(".json"))
    files = [(os.path.join(json_dir, f), _read(os.path.join(json_dir, f))) for f in names]
    if class_names is None:
        class_names = _collect_class_names(files)
    index = {name: i for i, name in enumerate(class_names)}
    dicts, num_skipped = [], 0
    for json_file, data in files:
        anns = []
        for i, shape in enumerate(data["shapes"]):
            where = f"{json_file}: shape #{i}"
            kind = shape.get("shape_type", "polygon")
            if kind not in ("polygon", "rectangle", "circle"):
                if skip_unsupported:
                    num_skipped += 1
                    continue
                raise ValueError(
                    f"{where} has shape_type {kind!r}; supported are 'polygon', 'rectangle' "
                    "and 'circle' (pass skip_unsupported=True to skip others)"
                )
            label = shape.get("label")
            if label not in index:
                raise ValueError(
                    f"{where} has label {label!r}, which is not in class_names "
                    f"{list(class_names)[:10]}"
                )
            poly = _shape_to_polygon(shape, where)
            xs, ys = poly[0::2], poly[1::2]
            anns.append(
                {
                    "bbox": [min(xs), min(ys), max(xs), max(ys)],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": index[label],
                    "segmentation": [poly],
                    "iscrowd": 0,
                }
            )
        dicts.append(
            {
                "file_name": os.path.normpath(
                    os.path.join(os.path.dirname(json_file), data["imagePath"])
                ),
                "image_id": os.path.splitext(os.path.basename(json_file))[0],
                "height": int(data["imageHeight"]),
                "width": int(data["imageWidth"]),
                "annotations": anns,
            }
        )
    if num_skipped:
        logger.warning("Skipped %d shapes of unsupported shape_type in %s", num_skipped, json_dir)
    logger.info("Loaded %d images in the LabelMe format from %s", len(dicts), json_dir)
    return dicts


def register_labelme(name: str, json_dir: str, class_names: Sequence[str] | None = None) -> None:
    """Register a LabelMe directory under ``name``; nothing is read until it is asked for.

    If ``class_names`` is None, ``thing_classes`` is filled in when the dataset is first loaded.
    """

    def load() -> list[dict]:
        names = class_names
        if names is None:
            names = _collect_class_names(
                [
                    (f, _read(os.path.join(json_dir, f)))
                    for f in os.listdir(json_dir)
                    if f.endswith(".json")
                ]
            )
            MetadataCatalog.get(name).set(thing_classes=names)
        return load_labelme(json_dir, names)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_dir=json_dir)
    if class_names is not None:
        MetadataCatalog.get(name).set(thing_classes=list(class_names))
