"""Read LVIS (v0.5 and v1) instance annotations into Detectron2 dataset dicts."""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Any

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.structures.boxes import BoxMode
from heron.utils.file_io import PathManager

__all__ = ["get_lvis_instances_meta", "load_lvis_json", "register_lvis_instances"]

logger = logging.getLogger(__name__)


def get_lvis_instances_meta(dataset_name: str, categories: list[dict] | None = None) -> dict:
    """Return the metadata ({"thing_classes": [...]}) of an LVIS dataset.

    Heron does not ship LVIS's 1203 category names: they are taken from ``categories`` (the
    "categories" list of an LVIS json), or else from ``thing_classes`` already set in
    ``MetadataCatalog.get(dataset_name)``.

    Args:
        dataset_name: registered dataset name.
        categories: LVIS category dicts with "id" (1..K, contiguous) and "synonyms" or "name".

    Raises:
        ValueError: no categories were given and none are registered, or the ids are not 1..K.
    """
    if categories is None:
        existing = MetadataCatalog.get(dataset_name).get("thing_classes")
        if existing is None:
            raise ValueError(
                f"No LVIS metadata for dataset {dataset_name!r}: pass the json's 'categories' "
                "or set MetadataCatalog.get(name).thing_classes first"
            )
        return {"thing_classes": list(existing)}
    cats = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if ids != list(range(1, len(cats) + 1)):
        raise ValueError(f"LVIS category ids must be 1..{len(cats)} without gaps, got {ids[:10]}")
    # Detectron2's built-in LVIS metadata names each class by its first synonym
    names = [c["synonyms"][0] if c.get("synonyms") else c["name"] for c in cats]
    return {"thing_classes": names}


def _image_file_name(image_root: str, img: dict, json_file: str) -> str:
    # Detectron2 takes "split/file" from coco_url (present in v1 and v0.5 jsons); a json that
    # has only "file_name" (some v0.5 exports) uses it relative to image_root.
    if "coco_url" in img:  # ".../train2017/000000155379.jpg" -> train2017/000000155379.jpg
        parts = img["coco_url"].split("/")
        if len(parts) < 2:
            raise ValueError(
                f"{json_file}: image id {img['id']!r} has coco_url {img['coco_url']!r}; "
                "expected '.../<split>/<file>'"
            )
        return os.path.join(image_root, parts[-2], parts[-1])
    if "file_name" in img:
        return os.path.join(image_root, img["file_name"])
    raise ValueError(f"{json_file}: image id {img['id']!r} has neither 'file_name' nor 'coco_url'")


def _read(json_file: str) -> dict:
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{json_file}: the top-level object is missing key(s) {missing}")
    return data


def _convert(ann: dict, extra_keys: list[str], id_map: dict | None, json_file: str) -> dict:
    where = f"{json_file}: annotation id {ann.get('id')!r}"
    for key in ["bbox", "category_id", "segmentation", *extra_keys]:
        if key not in ann:
            raise ValueError(f"{where} is missing key {key!r}")
    if len(ann["bbox"]) != 4:
        raise ValueError(f"{where}: bbox must be 4 numbers (x, y, w, h), got {ann['bbox']}")
    segm = ann["segmentation"]
    if not isinstance(segm, list) or not segm:
        raise ValueError(f"{where}: segmentation must be a non-empty list of polygons")
    for poly in segm:
        if len(poly) % 2 != 0 or len(poly) < 6:
            raise ValueError(
                f"{where}: polygon with {len(poly)} coordinates; expected an even count >= 6"
            )
    cat = ann["category_id"]
    if id_map is not None:
        if cat not in id_map:
            raise ValueError(f"{where}: category_id {cat!r} is not in 'categories'")
        category_id = id_map[cat]
    else:
        category_id = cat - 1  # LVIS ids are 1..K
    obj = {
        "bbox": ann["bbox"],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": category_id,
        "segmentation": segm,
    }
    obj.update({k: ann[k] for k in extra_keys})
    return obj


def load_lvis_json(
    json_file: str,
    image_root: str,
    dataset_name: str | None = None,
    extra_annotation_keys: list[str] | None = None,
) -> list[dict]:
    """Load an LVIS json (v0.5 or v1) into Detectron2 dataset dicts.

    Args:
        json_file: path to the LVIS json.
        image_root: directory joined in front of each image's path: the last two components
            "split/file" of ``coco_url``, or ``file_name`` when an image has no ``coco_url``.
        dataset_name: if given, ``thing_classes`` is set in ``MetadataCatalog`` from the json's
            categories.
        extra_annotation_keys: further per-annotation keys to copy (e.g. "area").

    Returns:
        One dict per image sorted by image id, with "not_exhaustive_category_ids" and
        "neg_category_ids" (LVIS ids, 1-based, as stored in the json) and annotations with
        0-based ``category_id``, XYWH boxes and polygon segmentations.

    Raises:
        ValueError: malformed input; the message names the file and the record.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    data = _read(json_file)
    meta = get_lvis_instances_meta(dataset_name or "", data["categories"])
    id_map = None
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(**meta)
        id_map = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id")
    images = {}
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "height", "width") if k not in img]
        if missing:
            raise ValueError(f"{json_file}: image #{i} is missing key(s) {missing}")
        if img["id"] in images:
            raise ValueError(f"{json_file}: image id {img['id']!r} appears more than once")
        images[img["id"]] = img
    by_image: dict[Any, list[dict]] = collections.defaultdict(list)
    ann_ids: set = set()
    for i, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in images:
            raise ValueError(
                f"{json_file}: annotation #{i} (id {ann.get('id')!r}) refers to image_id "
                f"{ann.get('image_id')!r}, which is not in 'images'"
            )
        if "id" in ann:
            if ann["id"] in ann_ids:
                raise ValueError(f"{json_file}: annotation id {ann['id']!r} is not unique")
            ann_ids.add(ann["id"])
        by_image[ann["image_id"]].append(ann)
    extra = list(extra_annotation_keys or [])
    dicts = []
    for image_id in sorted(images):
        img = images[image_id]
        dicts.append(
            {
                "file_name": _image_file_name(image_root, img, json_file),
                "height": img["height"],
                "width": img["width"],
                "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
                "neg_category_ids": img.get("neg_category_ids", []),
                "image_id": image_id,
                "annotations": [_convert(a, extra, id_map, json_file) for a in by_image[image_id]],
            }
        )
    logger.info("Loaded %d images in the LVIS format from %s", len(dicts), json_file)
    return dicts


def register_lvis_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register an LVIS-format dataset under ``name``; nothing is read until it is asked for.

    Args:
        name: dataset name, e.g. "lvis_v1_train".
        metadata: extra metadata (may be empty), stored in ``MetadataCatalog.get(name)``.
        json_file: path to the LVIS json.
        image_root: directory holding the images.
    """
    DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="lvis", **metadata
    )
