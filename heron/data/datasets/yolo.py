"""Read YOLO-format detection labels (one txt per image) into Detectron2 dataset dicts.

Each label line is "class cx cy w h" with the box center and size normalized by the image
width and height to [0, 1]. The loader converts them to absolute XYXY pixels, reading the
image size from the image header.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.structures.boxes import BoxMode
from heron.utils.file_io import PathManager

__all__ = ["load_yolo", "register_yolo"]

logger = logging.getLogger(__name__)

# Normalized values may leave [0, 1] by this much (float round-off in exported labels).
_TOLERANCE = 1e-6


def _read_class_names(class_names_file: str) -> list[str]:
    with PathManager.open(class_names_file, "r") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    for lineno, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"{class_names_file}:{lineno}: empty class name")
    return names


def _parse_line(
    line: str, where: str, num_classes: int, width: int, height: int, repair: str | None
) -> tuple[dict, bool]:
    """Parse one label line into an annotation; return (annotation, whether it was clipped)."""
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(
            f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}: {line!r}"
        )
    try:
        cls_float = float(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise ValueError(f"{where}: fields must be numbers, got {line!r}") from None
    if not cls_float.is_integer() or not 0 <= cls_float < num_classes:
        raise ValueError(
            f"{where}: class id {fields[0]!r} must be an integer in [0, {num_classes})"
        )
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    values = (cx, cy, w, h, x0, y0, x1, y1)
    inside = all(-_TOLERANCE <= v <= 1 + _TOLERANCE for v in values)
    clipped = False
    if not inside:
        if repair != "clip" or w < 0 or h < 0:
            raise ValueError(
                f"{where}: box (cx, cy, w, h) = ({cx}, {cy}, {w}, {h}) leaves the normalized "
                "range [0, 1]; pass repair='clip' to clip such boxes"
            )
        clipped = True
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
    ann = {
        "bbox": [x0 * width, y0 * height, x1 * width, y1 * height],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": int(cls_float),
        "iscrowd": 0,
    }
    return ann, clipped


def _read_labels(
    label_file: str, num_classes: int, width: int, height: int, repair: str | None
) -> tuple[list[dict], int]:
    anns, num_clipped = [], 0
    with PathManager.open(label_file, "r") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{label_file}:{lineno}"
            ann, clipped = _parse_line(line, where, num_classes, width, height, repair)
            anns.append(ann)
            num_clipped += clipped
    return anns, num_clipped


def _log_orphan_labels(label_dir: str, stems: set[str]) -> None:
    if not os.path.isdir(label_dir):
        raise ValueError(f"label_dir must be an existing directory, got {label_dir!r}")
    orphans = sorted(f for f in os.listdir(label_dir) if f.endswith(".txt") and f[:-4] not in stems)
    if orphans:
        logger.warning(
            "Ignored %d label files in %s without a matching image, e.g. %s",
            len(orphans),
            label_dir,
            orphans[:5],
        )


def load_yolo(
    image_dir: str,
    label_dir: str,
    class_names_file: str,
    *,
    image_ext: Sequence[str] = (".jpg", ".png"),
    repair: str | None = None,
) -> list[dict]:
    """Load a YOLO-format dataset into Detectron2 dataset dicts.

    Args:
        image_dir: directory of images (not searched recursively).
        label_dir: directory of "<image stem>.txt" label files.
        class_names_file: text file with one class name per line; line i is class id i.
        image_ext: image file extensions to include (case-insensitive).
        repair: None to reject boxes outside [0, 1] (beyond a 1e-6 tolerance), or "clip"
            to clip them to the image (the number clipped is logged).

    Returns:
        One dict per image sorted by file name, with ``image_id`` the file stem and boxes in
        ``BoxMode.XYXY_ABS`` pixels. An image without a label file has no annotations.

    Raises:
        ValueError: a malformed label line; the message names the file and line number.
    """
    if repair not in (None, "clip"):
        raise ValueError(f"repair must be None or 'clip', got {repair!r}")
    image_dir, label_dir = os.fspath(image_dir), os.fspath(label_dir)
    class_names = _read_class_names(os.fspath(class_names_file))
    exts = tuple(e.lower() for e in image_ext)
    files = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(exts))
    stems = [os.path.splitext(f)[0] for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(
            f"{image_dir}: several images share the stem(s) {dupes[:5]}, so their label files "
            "would be ambiguous"
        )
    _log_orphan_labels(label_dir, set(stems))
    dicts, num_clipped, num_unlabeled = [], 0, 0
    for fname, stem in zip(files, stems):
        path = os.path.join(image_dir, fname)
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
        label_file = os.path.join(label_dir, stem + ".txt")
        anns: list[dict] = []
        if os.path.isfile(label_file):
            anns, clipped = _read_labels(label_file, len(class_names), width, height, repair)
            num_clipped += clipped
        else:
            num_unlabeled += 1
        dicts.append(
            {
                "file_name": path,
                "image_id": stem,
                "height": height,
                "width": width,
                "annotations": anns,
            }
        )
    if num_clipped:
        logger.warning("Clipped %d boxes to their image in %s", num_clipped, label_dir)
    if num_unlabeled:
        logger.info("%d images in %s have no label file (no objects)", num_unlabeled, image_dir)
    logger.info("Loaded %d images in the YOLO format from %s", len(dicts), image_dir)
    return dicts


def register_yolo(name: str, image_dir: str, label_dir: str, class_names_file: str) -> None:
    """Register a YOLO-format dataset under ``name``; nothing is read until it is asked for.

    ``thing_classes`` is read from ``class_names_file`` now, so the metadata is complete.
    """
    DatasetCatalog.register(name, lambda: load_yolo(image_dir, label_dir, class_names_file))
    MetadataCatalog.get(name).set(
        thing_classes=_read_class_names(os.fspath(class_names_file)),
        image_dir=image_dir,
        label_dir=label_dir,
    )
