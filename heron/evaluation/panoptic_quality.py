"""Panoptic quality (PQ, SQ, RQ) of Kirillov et al., computed as the COCO panoptic API does.

Inputs are COCO panoptic jsons plus one RGB PNG per image whose pixels hold segment ids
(``id = R + 256 * G + 256**2 * B``; id 0 is VOID, i.e. unlabeled). The rules follow
panopticapi's ``pq_compute`` exactly:

- A ground-truth and a predicted segment of the same category match when their IoU is
  above 0.5; the union leaves out the predicted pixels that fall on VOID in the ground truth.
  Crowd ground-truth segments (``iscrowd == 1``) never match.
- Unmatched non-crowd ground-truth segments are false negatives.
- An unmatched prediction is a false positive unless more than half of its pixels lie on VOID
  or on the crowd region of its own category (the last crowd segment of that category in
  the image's ``segments_info``, as in panopticapi).
- Per category: ``PQ = sum(IoU of TPs) / (TP + FP / 2 + FN / 2)``, ``SQ = sum(IoU) / TP``,
  ``RQ = TP / (TP + FP / 2 + FN / 2)``. "All", "Things" and "Stuff" average the categories
  with ``TP + FP + FN > 0``; ``n`` is their number.

Ground-truth segment areas come from the json's ``area`` (computed from the PNG when a
segment has none); predicted areas are always counted in the PNG.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from heron.utils.file_io import PathManager

__all__ = [
    "OFFSET",
    "VOID",
    "PQStat",
    "PQStatCat",
    "id2rgb",
    "pq_compute",
    "pq_compute_single_image",
    "rgb2id",
]

logger = logging.getLogger(__name__)

# Pairs (gt id, pred id) are packed into one integer gt * OFFSET + pred; ids fit in 24 bits.
OFFSET = 256 * 256 * 256
VOID = 0


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Decode an (H, W, 3) RGB panoptic image into (H, W) uint32 segment ids R + 256 G + 256**2 B."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"color must be an (H, W, 3) RGB array, got shape {color.shape}")
    color = color.astype(np.uint32)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Encode (H, W) non-negative segment ids below 256**3 as an (H, W, 3) uint8 RGB image."""
    id_map = np.asarray(id_map)
    if id_map.size and (id_map.min() < 0 or id_map.max() >= OFFSET):
        raise ValueError(
            f"id_map values must lie in [0, {OFFSET}), got range [{id_map.min()}, {id_map.max()}]"
        )
    ids = id_map.astype(np.int64)
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = ids % 256
        ids = ids // 256
    return rgb


class PQStatCat:
    """Running counts of one category: summed IoU of true positives, TP, FP and FN."""

    def __init__(self) -> None:
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, other: PQStatCat) -> PQStatCat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category :class:`PQStatCat` counts, summable over images with ``+=``."""

    def __init__(self) -> None:
        self.pq_per_cat: defaultdict[int, PQStatCat] = defaultdict(PQStatCat)

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.pq_per_cat[category_id]

    def __iadd__(self, other: PQStat) -> PQStat:
        for category_id, stat in other.pq_per_cat.items():
            self.pq_per_cat[category_id] += stat
        return self

    def pq_average(
        self, categories: Mapping[int, Mapping[str, Any]], isthing: bool | None
    ) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """Average PQ, SQ and RQ over the categories that occur.

        Args:
            categories: category id -> category dict with "isthing".
            isthing: True for things only, False for stuff only, None for all.

        Returns:
            ``({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq", "tp", "fp", "fn"}})``,
            fractions in [0, 1]. Categories with no TP, FP or FN get zeros and are not
            counted in ``n``; when ``n == 0`` the averages are 0 (panopticapi divides by zero).
        """
        totals = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        n = 0
        per_class: dict[int, dict[str, float]] = {}
        for category_id, info in categories.items():
            if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
                continue
            stat = self.pq_per_cat.get(category_id, PQStatCat())
            counts = {"tp": stat.tp, "fp": stat.fp, "fn": stat.fn}
            denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
            if stat.tp + stat.fp + stat.fn == 0:
                per_class[category_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, **counts}
                continue
            n += 1
            scores = {
                "pq": stat.iou / denominator,
                "sq": stat.iou / stat.tp if stat.tp != 0 else 0.0,
                "rq": stat.tp / denominator,
            }
            per_class[category_id] = {**scores, **counts}
            for key in totals:
                totals[key] += scores[key]
        averages = {key: (value / n if n else 0.0) for key, value in totals.items()}
        return {**averages, "n": n}, per_class


def _pred_segments_with_area(
    pred_ann: Mapping[str, Any], pan_pred: np.ndarray, categories: Mapping[int, Any]
) -> dict[int, dict[str, Any]]:
    """Index the predicted segments by id, add their pixel counts and check them against the PNG."""
    image_id = pred_ann.get("image_id")
    pred_segms = {int(s["id"]): dict(s) for s in pred_ann["segments_info"]}
    not_in_png = set(pred_segms)
    ids, counts = np.unique(pan_pred, return_counts=True)
    for segment_id, count in zip(ids.tolist(), counts.tolist()):
        if segment_id not in pred_segms:
            if segment_id == VOID:
                continue
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {segment_id} is in the "
                f"predicted PNG but not in the prediction's segments_info"
            )
        pred_segms[segment_id]["area"] = count
        not_in_png.discard(segment_id)
        if pred_segms[segment_id]["category_id"] not in categories:
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {segment_id} has unknown "
                f"category_id {pred_segms[segment_id]['category_id']!r}"
            )
    if not_in_png:
        raise KeyError(
            f"In the image with ID {image_id} the segment IDs {sorted(not_in_png)} are in the "
            f"prediction's segments_info but not in the predicted PNG"
        )
    return pred_segms


def _gt_segments(gt_ann: Mapping[str, Any], pan_gt: np.ndarray) -> dict[int, dict[str, Any]]:
    """Index the ground-truth segments by id; a segment without "area" gets its pixel count."""
    gt_segms = {int(s["id"]): dict(s) for s in gt_ann["segments_info"]}
    for segment_id, segment in gt_segms.items():
        if "area" not in segment:
            segment["area"] = int(np.count_nonzero(pan_gt == segment_id))
    return gt_segms


def pq_compute_single_image(
    gt_ann: Mapping[str, Any],
    pred_ann: Mapping[str, Any],
    pan_gt: np.ndarray,
    pan_pred: np.ndarray,
    categories: Mapping[int, Any],
) -> PQStat:
    """Count the TPs (with their IoU), FPs and FNs of one image, per category.

    Args:
        gt_ann: the image's ground-truth annotation ("segments_info" with "id",
            "category_id", optional "iscrowd" (default 0) and "area").
        pred_ann: the image's predicted annotation ("segments_info" with "id", "category_id").
        pan_gt: (H, W) ground-truth segment ids, 0 = VOID.
        pan_pred: (H, W) predicted segment ids, 0 = no segment.
        categories: category id -> category dict; predicted categories must be in it.

    Returns:
        The image's :class:`PQStat`.

    Raises:
        ValueError: the two id maps differ in shape.
        KeyError: a predicted id is in the PNG but not in segments_info or the reverse, or a
            predicted category is not in ``categories``.
    """
    if pan_gt.shape != pan_pred.shape:
        raise ValueError(
            f"In the image with ID {gt_ann.get('image_id')} the ground truth is "
            f"{pan_gt.shape} but the prediction is {pan_pred.shape}"
        )
    pq_stat = PQStat()
    gt_segms = _gt_segments(gt_ann, pan_gt)
    pred_segms = _pred_segments_with_area(pred_ann, pan_pred, categories)

    # Intersections of every (gt id, pred id) pair that shares a pixel.
    pairs = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    labels, counts = np.unique(pairs, return_counts=True)
    gt_pred_map = {
        (int(label // OFFSET), int(label % OFFSET)): int(count)
        for label, count in zip(labels.tolist(), counts.tolist())
    }

    gt_matched, pred_matched = set(), set()
    for (gt_id, pred_id), intersection in gt_pred_map.items():
        if gt_id not in gt_segms or pred_id not in pred_segms:
            continue
        gt_segment, pred_segment = gt_segms[gt_id], pred_segms[pred_id]
        if gt_segment.get("iscrowd", 0) == 1:
            continue
        if gt_segment["category_id"] != pred_segment["category_id"]:
            continue
        # Predicted pixels on VOID ground truth do not enlarge the union.
        union = (
            pred_segment["area"]
            + gt_segment["area"]
            - intersection
            - gt_pred_map.get((VOID, pred_id), 0)
        )
        iou = intersection / union
        if iou > 0.5:  # above 0.5 a pair is unique, so the visiting order does not matter
            stat = pq_stat[gt_segment["category_id"]]
            stat.tp += 1
            stat.iou += iou
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)

    crowd_by_category: dict[Any, int] = {}
    for gt_id, gt_segment in gt_segms.items():
        if gt_id in gt_matched:
            continue
        if gt_segment.get("iscrowd", 0) == 1:
            # panopticapi keeps the last crowd segment of each category
            crowd_by_category[gt_segment["category_id"]] = gt_id
            continue
        pq_stat[gt_segment["category_id"]].fn += 1

    for pred_id, pred_segment in pred_segms.items():
        if pred_id in pred_matched:
            continue
        ignored = gt_pred_map.get((VOID, pred_id), 0)
        crowd_id = crowd_by_category.get(pred_segment["category_id"])
        if crowd_id is not None:
            ignored += gt_pred_map.get((crowd_id, pred_id), 0)
        if ignored / pred_segment["area"] > 0.5:  # mostly on VOID or crowd: not an error
            continue
        pq_stat[pred_segment["category_id"]].fp += 1
    return pq_stat


def _load_json(value: str | os.PathLike | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path or a dict, got {type(value).__name__}")
    with PathManager.open(os.fspath(value), "r") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{what} {os.fspath(value)!r}: expected a json object with 'annotations'")
    return data


def _default_folder(json_value: Any, what: str) -> str:
    # panopticapi's default: the folder named like the json file without ".json"
    if not isinstance(json_value, (str, os.PathLike)):
        raise ValueError(f"{what} must be given when the json is passed as a dict")
    return os.fspath(json_value).replace(".json", "")


def _categories_by_id(
    categories: Iterable[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]] | None,
    gt_json: Mapping[str, Any],
) -> dict[int, Mapping[str, Any]]:
    if categories is None:
        if "categories" not in gt_json:
            raise KeyError("gt_json has no 'categories' and no categories argument was given")
        categories = gt_json["categories"]
    if isinstance(categories, Mapping):
        return dict(categories)
    return {c["id"]: c for c in categories}


def _read_ids(folder: str, file_name: str) -> np.ndarray:
    path = os.path.join(folder, file_name)
    with PathManager.open(path, "rb") as f, Image.open(f) as img:
        if img.mode != "RGB":
            raise ValueError(f"{path}: panoptic PNG must be RGB, got mode {img.mode!r}")
        return rgb2id(np.asarray(img))


def pq_compute(
    gt_json: str | os.PathLike | Mapping[str, Any],
    pred_json: str | os.PathLike | Mapping[str, Any],
    gt_folder: str | None = None,
    pred_folder: str | None = None,
    categories: Iterable[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compute panoptic quality of predictions against ground truth, as panopticapi does.

    Args:
        gt_json: path to (or loaded) COCO panoptic ground-truth json.
        pred_json: path to (or loaded) prediction json in the same format; it needs an
            annotation for every ground-truth image (matched by "image_id").
        gt_folder: folder of the ground-truth PNGs; default, gt_json's path without ".json".
        pred_folder: folder of the predicted PNGs; default, pred_json's path without ".json".
        categories: category dicts ("id", "isthing") as a list or an id -> dict mapping;
            default, gt_json's "categories".

    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": {...}, "Stuff": {...}, "per_class":
        {category_id: {"pq", "sq", "rq", "tp", "fp", "fn"}}}``, PQ/SQ/RQ as fractions.

    Raises:
        KeyError: a ground-truth image has no prediction, or a prediction is inconsistent
            (see :func:`pq_compute_single_image`).
        ValueError: a folder does not exist, a PNG is not RGB, or image sizes differ.
    """
    gt_data = _load_json(gt_json, "gt_json")
    pred_data = _load_json(pred_json, "pred_json")
    gt_folder = (
        os.fspath(gt_folder) if gt_folder is not None else _default_folder(gt_json, "gt_folder")
    )
    pred_folder = (
        os.fspath(pred_folder)
        if pred_folder is not None
        else _default_folder(pred_json, "pred_folder")
    )
    for folder, what in ((gt_folder, "gt_folder"), (pred_folder, "pred_folder")):
        if not PathManager.isdir(folder):
            raise ValueError(f"{what} {folder!r} is not a directory")
    categories_by_id = _categories_by_id(categories, gt_data)

    pred_by_image = {ann["image_id"]: ann for ann in pred_data["annotations"]}
    pq_stat = PQStat()
    for gt_ann in gt_data["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise KeyError(f"pred_json has no prediction for the image with id {image_id!r}")
        pred_ann = pred_by_image[image_id]
        pq_stat += pq_compute_single_image(
            gt_ann,
            pred_ann,
            _read_ids(gt_folder, gt_ann["file_name"]),
            _read_ids(pred_folder, pred_ann["file_name"]),
            categories_by_id,
        )

    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = pq_stat.pq_average(categories_by_id, isthing=isthing)
        if name == "All":
            results["per_class"] = per_class
    logger.info(
        "PQ over %d images: All %.3f, Things %.3f, Stuff %.3f",
        len(gt_data["annotations"]),
        100 * results["All"]["pq"],
        100 * results["Things"]["pq"],
        100 * results["Stuff"]["pq"],
    )
    return results
