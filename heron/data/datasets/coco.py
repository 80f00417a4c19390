"""Read COCO-format instance annotations into dataset dicts, and write them back.

The dataset-dict format is Detectron2's: one dict per image with ``file_name``, ``height``,
``width``, ``image_id`` and ``annotations`` (a list of dicts with ``bbox`` in
``BoxMode.XYWH_ABS``, ``bbox_mode``, ``category_id``, ``iscrowd`` and optionally
``segmentation`` and ``keypoints``).
"""

from __future__ import annotations

import collections
import copy
import datetime
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from tabulate import tabulate

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.structures.boxes import Boxes, BoxMode
from heron.structures.masks import PolygonMasks
from heron.utils.file_io import PathManager

__all__ = [
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "load_coco_json",
    "register_coco_instances",
]

logger = logging.getLogger(__name__)

# A box may overshoot the image by this many pixels (float round-off in exported
# annotations) before it counts as outside the image.
_BOX_TOLERANCE = 1e-2
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
_REQUIRED_ANN_KEYS = ("image_id", "bbox", "category_id")


def _require(record: dict, keys: Sequence[str], what: str, json_file: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{json_file}: {what} is missing required key(s) {missing}")


def _read_json(json_file: str) -> dict:
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a JSON object, got {type(data).__name__}")
    _require(data, ("images", "annotations", "categories"), "the top-level object", json_file)
    return data


def _index_images(data: dict, json_file: str) -> dict[Any, dict]:
    images: dict[Any, dict] = {}
    for i, img in enumerate(data["images"]):
        _require(img, _REQUIRED_IMAGE_KEYS, f"image #{i}", json_file)
        if img["id"] in images:
            raise ValueError(f"{json_file}: image id {img['id']!r} appears more than once")
        images[img["id"]] = img
    return images


def _group_annotations(data: dict, images: dict, json_file: str) -> dict[Any, list[dict]]:
    by_image: dict[Any, list[dict]] = collections.defaultdict(list)
    seen_ids: set = set()
    for i, ann in enumerate(data["annotations"]):
        _require(ann, _REQUIRED_ANN_KEYS, f"annotation #{i} (id {ann.get('id')!r})", json_file)
        if "id" in ann:
            if ann["id"] in seen_ids:
                raise ValueError(f"{json_file}: annotation id {ann['id']!r} is not unique")
            seen_ids.add(ann["id"])
        if ann["image_id"] not in images:
            raise ValueError(
                f"{json_file}: annotation id {ann.get('id')!r} refers to image_id "
                f"{ann['image_id']!r}, which is not in 'images'"
            )
        by_image[ann["image_id"]].append(ann)
    return by_image


def _convert_segmentation(segm: Any, ann: dict, json_file: str) -> tuple[Any, int]:
    """Return (segmentation in Detectron2 form or None if no valid polygon, #dropped polygons)."""
    where = f"{json_file}: annotation id {ann.get('id')!r}"
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"{where}: RLE segmentation needs 'counts' and 'size', got {segm}")
        if isinstance(segm["counts"], list):  # uncompressed RLE -> compressed
            h, w = segm["size"]
            return mask_util.frPyObjects(segm, h, w), 0
        return segm, 0
    if not isinstance(segm, list) or not all(isinstance(p, list) for p in segm):
        raise ValueError(
            f"{where}: segmentation must be a list of polygons (lists of floats) or an RLE "
            f"dict, got {type(segm).__name__} {str(segm)[:60]}"
        )
    for poly in segm:
        if len(poly) % 2 != 0:
            raise ValueError(
                f"{where}: polygon has an odd number of coordinates ({len(poly)}); "
                "expected x0, y0, x1, y1, ..."
            )
    valid = [[float(x) for x in poly] for poly in segm if len(poly) >= 6]
    return (valid or None), len(segm) - len(valid)


def _check_box(bbox: list, img: dict, ann: dict, json_file: str, repair: str | None) -> bool:
    """Validate a XYWH box in place; return True if it was clipped."""
    where = f"{json_file}: annotation id {ann.get('id')!r} (image {img['id']!r})"
    if len(bbox) != 4:
        raise ValueError(f"{where}: bbox must have 4 numbers (x, y, w, h), got {bbox}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"{where}: bbox has negative width or height: {bbox}")
    W, H = float(img["width"]), float(img["height"])
    tol = _BOX_TOLERANCE
    if x >= -tol and y >= -tol and x + w <= W + tol and y + h <= H + tol:
        return False
    if repair != "clip":
        raise ValueError(
            f"{where}: bbox {bbox} extends outside the {img['width']}x{img['height']} image; "
            "pass repair='clip' to clip such boxes"
        )
    x0, y0 = min(max(x, 0.0), W), min(max(y, 0.0), H)
    x1, y1 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
    bbox[:] = [x0, y0, x1 - x0, y1 - y0]
    return True


def _shift_keypoints(keypoints: list) -> list:
    # COCO keypoint coordinates are integer pixel indices in [0, W-1]; Detectron2
    # (load_coco_json) adds 0.5 to every x and y to place them at pixel centers in
    # its continuous coordinate frame. Visibility flags are left alone.
    return [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(keypoints)]


def _category_map(data: dict, json_file: str) -> tuple[list[int], list[str]]:
    cats = data["categories"]
    for i, c in enumerate(cats):
        _require(c, ("id", "name"), f"category #{i}", json_file)
    cats = sorted(cats, key=lambda c: c["id"])
    return [c["id"] for c in cats], [c["name"] for c in cats]


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: str | None = None,
    extra_annotation_keys: list[str] | None = None,
    *,
    repair: str | None = None,
) -> list[dict]:
    """Load a COCO instances json into Detectron2 dataset dicts.

    Args:
        json_file: path to the COCO json.
        image_root: directory joined in front of each image's ``file_name``.
        dataset_name: if given, category ids are mapped to contiguous ids 0..K-1 (in order
            of increasing COCO id) and ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` are set in ``MetadataCatalog``. Without it
            the COCO ids are kept, as in Detectron2.
        extra_annotation_keys: further per-annotation keys to copy (e.g. "area").
        repair: None to reject boxes extending outside their image, or "clip" to clip them
            to the image (the number clipped is logged).

    Returns:
        One dict per image, sorted by image id; images without annotations are kept with
        ``annotations == []``. Annotations with ``ignore == 1`` and annotations none of whose
        polygons has 3 points are dropped, with a logged count.

    Raises:
        ValueError: malformed input; the message names the file and the record.
    """
    if repair not in (None, "clip"):
        raise ValueError(f"repair must be None or 'clip', got {repair!r}")
    json_file = os.fspath(json_file)
    data = _read_json(json_file)
    images = _index_images(data, json_file)
    cat_ids, cat_names = _category_map(data, json_file)
    id_map = None
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = cat_names
        id_map = {v: i for i, v in enumerate(cat_ids)}
        meta.thing_dataset_id_to_contiguous_id = id_map
    anns_by_image = _group_annotations(data, images, json_file)
    ann_keys = ["iscrowd", "bbox", "keypoints", "category_id"] + (extra_annotation_keys or [])
    stats: collections.Counter = collections.Counter()
    known_cat_ids = set(cat_ids)
    dataset_dicts = []
    for image_id in sorted(images):
        img = images[image_id]
        objs = []
        for ann in anns_by_image.get(image_id, []):
            obj = _convert_annotation(ann, img, ann_keys, known_cat_ids, id_map, json_file, repair)
            stats.update(obj.pop("_stats"))
            if obj.get("_dropped"):
                continue
            objs.append(obj)
        dataset_dicts.append(
            {
                "file_name": os.path.join(os.fspath(image_root), img["file_name"]),
                "height": img["height"],
                "width": img["width"],
                "image_id": image_id,
                "annotations": objs,
            }
        )
    _log_summary(json_file, dataset_dicts, stats, cat_ids, cat_names, id_map)
    return dataset_dicts


def _convert_annotation(
    ann: dict,
    img: dict,
    ann_keys: list[str],
    cat_ids: set,
    id_map: dict | None,
    json_file: str,
    repair: str | None,
) -> dict:
    """Turn one COCO annotation into a Detectron2 annotation dict (``_stats`` attached)."""
    stats: collections.Counter = collections.Counter()
    obj: dict[str, Any] = {"_stats": stats}
    if ann.get("ignore", 0) == 1:
        stats["ignored"] += 1
        obj["_dropped"] = True
        return obj
    # the json was parsed for this call only, so its values can be used without copying
    obj.update({k: ann[k] for k in ann_keys if k in ann})
    if ann["category_id"] not in cat_ids:
        raise ValueError(
            f"{json_file}: annotation id {ann.get('id')!r} has category_id "
            f"{ann['category_id']!r}, which is not declared in 'categories' {sorted(cat_ids)}"
        )
    if _check_box(obj["bbox"], img, ann, json_file, repair):
        stats["clipped"] += 1
    segm = ann.get("segmentation")
    if segm:
        segm, num_bad = _convert_segmentation(segm, ann, json_file)
        stats["short_polygons"] += num_bad
        if segm is None:
            stats["no_valid_segmentation"] += 1
            obj["_dropped"] = True
            return obj
        obj["segmentation"] = segm
    if obj.get("keypoints"):
        obj["keypoints"] = _shift_keypoints(obj["keypoints"])
    obj["bbox_mode"] = BoxMode.XYWH_ABS
    if id_map is not None:
        obj["category_id"] = id_map[obj["category_id"]]
    return obj


def _log_summary(
    json_file: str,
    dataset_dicts: list[dict],
    stats: collections.Counter,
    cat_ids: list[int],
    cat_names: list[str],
    id_map: dict | None,
) -> None:
    if stats["ignored"]:
        logger.warning("Skipped %d annotations with ignore=1 in %s", stats["ignored"], json_file)
    if stats["short_polygons"]:
        logger.warning(
            "Dropped %d polygons with fewer than 3 points in %s", stats["short_polygons"], json_file
        )
    if stats["no_valid_segmentation"]:
        logger.warning(
            "Filtered out %d instances without valid segmentation in %s. There might be issues "
            "in your dataset generation process.",
            stats["no_valid_segmentation"],
            json_file,
        )
    if stats["clipped"]:
        logger.warning("Clipped %d boxes to their image in %s", stats["clipped"], json_file)
    counts: collections.Counter = collections.Counter()
    for record in dataset_dicts:
        counts.update(a["category_id"] for a in record["annotations"])
    keys = list(range(len(cat_ids))) if id_map is not None else cat_ids
    rows = [[name, counts.get(k, 0)] for k, name in zip(keys, cat_names)]
    num_anns = sum(len(r["annotations"]) for r in dataset_dicts)
    logger.info(
        "Loaded %d images with %d annotations in COCO format from %s\n%s",
        len(dataset_dicts),
        num_anns,
        json_file,
        tabulate(rows, headers=["category", "#instances"], tablefmt="pipe"),
    )


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name``; nothing is read until it is asked for.

    Args:
        name: dataset name, e.g. "my_dataset_train".
        metadata: extra metadata (may be empty), stored in ``MetadataCatalog.get(name)``.
        json_file: path to the COCO instances json.
        image_root: directory holding the images.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not isinstance(json_file, (str, os.PathLike)):
        raise TypeError(f"json_file must be a path, got {type(json_file).__name__}")
    if not isinstance(image_root, (str, os.PathLike)):
        raise TypeError(f"image_root must be a path, got {type(image_root).__name__}")
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def _annotation_area(annotation: dict, bbox_xywh: list[float]) -> float:
    segm = annotation.get("segmentation")
    if isinstance(segm, list):  # polygons: shoelace area, as Detectron2 (PolygonMasks.area)
        return PolygonMasks([segm]).area()[0].item()
    if isinstance(segm, dict):  # RLE
        return float(mask_util.area(segm))
    if segm is not None:
        raise TypeError(
            f"segmentation must be a list of polygons or an RLE dict, got {type(segm).__name__}"
        )
    if len(bbox_xywh) == 5:  # rotated box (cx, cy, w, h, angle): area w * h
        return float(bbox_xywh[2]) * float(bbox_xywh[3])
    xyxy = BoxMode.convert(bbox_xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    return Boxes([xyxy]).area()[0].item()


def _to_coco_annotation(annotation: dict, image_id: Any, ann_id: int, reverse_id: Any) -> dict:
    bbox = annotation["bbox"]
    if isinstance(bbox, np.ndarray):
        if bbox.ndim != 1:
            raise ValueError(f"bbox must be 1-dimensional, got shape {bbox.shape}")
        bbox = bbox.tolist()
    if len(bbox) not in (4, 5):
        raise ValueError(f"bbox must have 4 (or 5 for rotated boxes) numbers, got {bbox}")
    to_mode = BoxMode.XYWH_ABS if len(bbox) == 4 else BoxMode.XYWHA_ABS
    bbox = BoxMode.convert(list(bbox), annotation["bbox_mode"], to_mode)
    out: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "bbox": [round(float(x), 3) for x in bbox],
        "area": float(_annotation_area(annotation, bbox)),
        "iscrowd": int(annotation.get("iscrowd", 0)),
        "category_id": int(reverse_id(annotation["category_id"])),
    }
    if "keypoints" in annotation:
        # undo the +0.5 of load_coco_json so the file holds COCO's integer pixel indices
        kps = [v - 0.5 if i % 3 != 2 else v for i, v in enumerate(annotation["keypoints"])]
        out["keypoints"] = kps
        out["num_keypoints"] = annotation.get("num_keypoints", sum(v > 0 for v in kps[2::3]))
    if "segmentation" in annotation:
        segm = copy.deepcopy(annotation["segmentation"])
        if isinstance(segm, dict) and isinstance(segm["counts"], bytes):
            segm["counts"] = segm["counts"].decode("ascii")
        out["segmentation"] = segm
    return out


def convert_to_coco_dict(dataset_name: str) -> dict:
    """Convert a registered dataset's dicts into a COCO-format dict.

    Contiguous category ids are mapped back through the metadata's
    ``thing_dataset_id_to_contiguous_id`` when present. Annotation ids are 1..N in order.

    Returns:
        dict with "info", "images", "categories", "licenses" and (if any) "annotations".
    """
    dataset_dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is not None:
        reverse = {v: k for k, v in id_map.items()}

        def reverse_id(contiguous_id: int) -> int:
            return reverse[contiguous_id]
    else:

        def reverse_id(contiguous_id: int) -> int:
            return contiguous_id

    categories = [
        {"id": reverse_id(i), "name": name} for i, name in enumerate(metadata.thing_classes)
    ]
    coco_images, coco_annotations = [], []
    for index, record in enumerate(dataset_dicts):
        image = {
            "id": record.get("image_id", index),
            "width": int(record["width"]),
            "height": int(record["height"]),
            "file_name": str(record["file_name"]),
        }
        coco_images.append(image)
        for annotation in record.get("annotations", []):
            ann_id = len(coco_annotations) + 1
            coco_annotations.append(
                _to_coco_annotation(annotation, image["id"], ann_id, reverse_id)
            )
    logger.info(
        "Converted %d images and %d annotations of %r to COCO format",
        len(coco_images),
        len(coco_annotations),
        dataset_name,
    )
    info = {
        "date_created": str(datetime.datetime.now()),
        "description": "COCO json file generated by Heron.",
    }
    coco_dict: dict[str, Any] = {
        "info": info,
        "images": coco_images,
        "categories": categories,
        "licenses": None,
    }
    if coco_annotations:
        coco_dict["annotations"] = coco_annotations
    return coco_dict


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """Write a registered dataset to ``output_file`` in COCO format.

    The file is written to a temporary name and renamed, so a reader never sees a partial
    file. With ``allow_cached`` an existing ``output_file`` is reused as is.
    """
    output_file = os.fspath(output_file)
    PathManager.mkdirs(os.path.dirname(output_file) or ".")
    if PathManager.exists(output_file) and allow_cached:
        logger.warning(
            "Using previously cached COCO format annotations at '%s'. Delete it or pass "
            "allow_cached=False to regenerate.",
            output_file,
        )
        return
    logger.info("Converting dataset %r to COCO format ...", dataset_name)
    coco_dict = convert_to_coco_dict(dataset_name)
    tmp_file = f"{output_file}.tmp.{os.getpid()}"
    with PathManager.open(tmp_file, "w") as f:
        json.dump(coco_dict, f)
        f.flush()
        if hasattr(f, "fileno"):
            os.fsync(f.fileno())
    os.replace(tmp_file, output_file)
