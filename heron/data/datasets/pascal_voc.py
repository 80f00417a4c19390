"""Read PASCAL VOC detection annotations (XML) into Detectron2 dataset dicts."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.structures.boxes import BoxMode
from heron.utils.file_io import PathManager

__all__ = ["CLASS_NAMES", "load_voc_instances", "register_pascal_voc"]

logger = logging.getLogger(__name__)

# fmt: off
CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on


def _read_split(dirname: str, split: str) -> list[str]:
    split_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    with PathManager.open(split_file, "r") as f:
        return [line.strip() for line in f if line.strip()]


def _text(node: ET.Element, path: str, anno_file: str, what: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise ValueError(f"{anno_file}: {what} has no <{path}> tag (or it is empty)")
    return found.text.strip()


def _number(node: ET.Element, path: str, anno_file: str, what: str) -> float:
    text = _text(node, path, anno_file, what)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{anno_file}: {what} <{path}> must be a number, got {text!r}") from None


def _parse_object(obj: ET.Element, index: int, class_names: Sequence[str], anno_file: str) -> dict:
    what = f"object #{index}"
    cls = _text(obj, "name", anno_file, what)
    if cls not in class_names:
        raise ValueError(
            f"{anno_file}: {what} has class name {cls!r}, which is not in class_names "
            f"({len(class_names)} names, e.g. {list(class_names)[:5]})"
        )
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise ValueError(f"{anno_file}: {what} ({cls!r}) has no <bndbox> tag")
    bbox = [_number(bndbox, k, anno_file, what) for k in ("xmin", "ymin", "xmax", "ymax")]
    # VOC pixel indices are 1-based; Detectron2 (load_voc_instances) subtracts 1 from
    # xmin and ymin only, so that x1 - x0 is the box width in its continuous frame.
    bbox[0] -= 1.0
    bbox[1] -= 1.0
    # "difficult" objects are kept, as in Detectron2, which trains on them.
    return {
        "category_id": list(class_names).index(cls),
        "bbox": bbox,
        "bbox_mode": BoxMode.XYXY_ABS,
    }


def _load_one(dirname: str, fileid: str, class_names: Sequence[str]) -> dict:
    anno_file = os.path.join(dirname, "Annotations", fileid + ".xml")
    with PathManager.open(anno_file, "r") as f:
        try:
            tree = ET.parse(f)
        except ET.ParseError as e:
            raise ValueError(f"{anno_file}: malformed XML ({e})") from None
    root = tree.getroot()
    return {
        "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
        "image_id": fileid,
        "height": int(_number(root, "size/height", anno_file, "the image")),
        "width": int(_number(root, "size/width", anno_file, "the image")),
        "annotations": [
            _parse_object(obj, i, class_names, anno_file)
            for i, obj in enumerate(root.findall("object"))
        ],
    }


def load_voc_instances(
    dirname: str, split: str, class_names: list[str] | tuple[str, ...]
) -> list[dict]:
    """Load VOC detection annotations into Detectron2 dataset dicts.

    Args:
        dirname: VOC root holding "Annotations", "ImageSets" and "JPEGImages".
        split: one of "train", "test", "val", "trainval" (the file ImageSets/Main/{split}.txt).
        class_names: class names; an object's ``category_id`` is its index here.

    Returns:
        One dict per image id listed in the split file, in file order, with boxes in
        ``BoxMode.XYXY_ABS`` (xmin and ymin shifted by -1). Difficult objects are kept.

    Raises:
        ValueError: malformed XML, a missing tag, or a class name not in ``class_names``;
            the message names the XML file and the object.
    """
    dirname = os.fspath(dirname)
    dicts = [_load_one(dirname, fileid, class_names) for fileid in _read_split(dirname, split)]
    logger.info(
        "Loaded %d images with %d objects from VOC split %r in %s",
        len(dicts),
        sum(len(d["annotations"]) for d in dicts),
        split,
        dirname,
    )
    return dicts


def register_pascal_voc(
    name: str,
    dirname: str,
    split: str,
    year: int,
    class_names: list[str] | tuple[str, ...] = CLASS_NAMES,
) -> None:
    """Register a VOC split under ``name``; nothing is read until it is asked for.

    Args:
        name: dataset name, e.g. "voc_2007_trainval".
        dirname: VOC root directory.
        split: split file name without extension.
        year: 2007 or 2012; stored in the metadata (the evaluator uses the 2007 metric for 2007).
        class_names: class names, VOC's 20 by default.
    """
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names),
        dirname=dirname,
        year=year,
        split=split,
        evaluator_type="pascal_voc",
    )
