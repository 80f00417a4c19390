"""LVIS's federated evaluation of boxes and masks, written for Heron (no ``lvis`` package).

The definitions are those of the LVIS API (``lvis.LVISEval``, v0.5.3), which Detectron2's
``LVISEvaluator`` calls:

- Ground truth: the annotations of the categories in the json with ``area > 0``.
- Federated filtering: in an image, detections are evaluated only for the categories that
  have ground truth there or are in its ``neg_category_ids``; others are dropped, so a
  detector is not penalized for classes whose presence is unknown. A detection of a class
  in the image's ``not_exhaustive_category_ids`` that matches no ground truth is ignored.
- Matching (per image, category, IoU threshold and area range): detections by decreasing
  score take the unmatched ground truth of highest IoU >= threshold; ground truth outside
  the area range (or with ``ignore``) is matched only if no regular one qualifies, and the
  detections it takes are ignored. Unmatched detections outside the area range are ignored.
- Precision is made non-increasing in recall and read at the 101 recall thresholds
  0:0.01:1 (0 beyond the highest recall reached). AP is the mean over IoU 0.50:0.05:0.95,
  recall thresholds and the categories that have ground truth; APr/APc/APf average the
  categories of frequency "r", "c" and "f".
- At most ``max_dets`` detections per image (highest scores) are kept: 300 for LVIS.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

__all__ = [
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "LVISEvalResult",
    "evaluate_lvis",
    "limit_dets_per_image",
]

# Same construction as the LVIS API, so that 0.5 and 0.75 are found by equality.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
# name -> [min, max] area, both inclusive
AREA_RANGES = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
_FREQUENCIES = ("r", "c", "f")


@dataclass
class LVISEvalResult:
    """Output of `evaluate_lvis`.

    Attributes:
        precision: (T, R, K, A) interpolated precision at IoU threshold t, recall threshold r,
            category k (sorted dataset ids, ``cat_ids``) and area range a (``AREA_RANGES``
            order); -1 where category k has no ground truth in area range a.
        recall: (T, K, A) recall with all detections; -1 likewise.
        cat_ids: (K,) the dataset category ids of the K axis.
        metrics: "AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@<max>",
            "ARs@<max>", "ARm@<max>", "ARl@<max>" (<max> is ``max_dets``, "all" when negative) as fractions in [0, 1], -1 when undefined
            (no category with ground truth in that group), as the LVIS API reports them.
    """

    precision: np.ndarray
    recall: np.ndarray
    cat_ids: list[Any]
    metrics: dict[str, float]


def limit_dets_per_image(results: Sequence[dict], max_dets: int) -> list[dict]:
    """Keep the ``max_dets`` highest-scoring results of each image (all when negative).

    Results are grouped by image in order of first appearance; an image over the limit has
    its results sorted by decreasing score (ties keep their order), as the LVIS API does.
    """
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    kept = []
    for anns in by_image.values():
        if 0 <= max_dets < len(anns):
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        kept.extend(anns)
    return kept


def _to_rle(segm: Any, height: int, width: int) -> dict:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE."""
    if isinstance(segm, list):  # polygons: all parts merged into one mask
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_util.frPyObjects(segm, height, width)
    return segm


def _check_gt(lvis_gt: dict) -> tuple[dict, list[Any], list[list[int]]]:
    """Validate the json's images and categories; return (images by id, cat ids, groups)."""
    for key in ("images", "annotations", "categories"):
        if key not in lvis_gt:
            raise ValueError(f"LVIS ground truth is missing the top-level key {key!r}")
    images = {img["id"]: img for img in lvis_gt["images"]}
    cats = sorted(lvis_gt["categories"], key=lambda c: c["id"])
    groups: list[list[int]] = [[] for _ in _FREQUENCIES]
    for k, cat in enumerate(cats):
        frequency = cat.get("frequency")
        if frequency not in _FREQUENCIES:
            raise ValueError(
                f"LVIS category id {cat['id']!r} has frequency {frequency!r}; "
                f"expected one of {list(_FREQUENCIES)}"
            )
        groups[_FREQUENCIES.index(frequency)].append(k)
    return images, [c["id"] for c in cats], groups


def _index_gt(lvis_gt: dict, images: dict, cat_set: set, iou_type: str) -> dict:
    """(image id, category id) -> ground truth list; only positive-area annotations."""
    gts: dict[tuple[Any, Any], list[dict]] = defaultdict(list)
    for i, ann in enumerate(lvis_gt["annotations"]):
        for key in ("image_id", "category_id", "area", "bbox"):
            if key not in ann:
                raise ValueError(f"LVIS annotation #{i} (id {ann.get('id')!r}) has no {key!r}")
        if ann["image_id"] not in images:
            raise ValueError(
                f"LVIS annotation #{i} (id {ann.get('id')!r}) has image_id "
                f"{ann['image_id']!r}, which is not in 'images'"
            )
        # the LVIS API selects annotations with 0 < area < inf
        if ann["category_id"] not in cat_set or not 0 < ann["area"] < float("inf"):
            continue
        img = images[ann["image_id"]]
        if iou_type == "segm":
            geometry = _to_rle(ann["segmentation"], img["height"], img["width"])
        else:
            geometry = list(ann["bbox"])
        gts[ann["image_id"], ann["category_id"]].append(
            {"geometry": geometry, "area": ann["area"], "ignore": bool(ann.get("ignore", 0))}
        )
    return gts


def _index_dt(results: Sequence[dict], images: dict, cat_set: set, iou_type: str) -> dict:
    """(image id, category id) -> detections, each with geometry, area and score."""
    dts: dict[tuple[Any, Any], list[dict]] = defaultdict(list)
    for i, res in enumerate(results):
        image_id, cat_id = res.get("image_id"), res.get("category_id")
        if image_id not in images:
            raise ValueError(f"LVIS result #{i} has image_id {image_id!r}, which is not an image")
        if cat_id not in cat_set:
            raise ValueError(
                f"LVIS result #{i} (image_id {image_id!r}) has category_id {cat_id!r}, which "
                "is not a category of the ground truth"
            )
        if iou_type == "segm":
            if "segmentation" not in res:
                raise ValueError(f"LVIS result #{i} (image_id {image_id!r}) has no segmentation")
            img = images[image_id]
            geometry = _to_rle(res["segmentation"], img["height"], img["width"])
            area = float(mask_util.area(geometry))
        else:
            if "bbox" not in res:
                raise ValueError(f"LVIS result #{i} (image_id {image_id!r}) has no bbox")
            geometry = list(res["bbox"])
            area = geometry[2] * geometry[3]
        if not 0 < area < float("inf"):
            continue  # the LVIS API selects results with 0 < area < inf
        dts[image_id, cat_id].append({"geometry": geometry, "area": area, "score": res["score"]})
    return dts


def _best(row: list[float], cols: list[int], taken: list[bool], thr: float) -> int:
    """Among the untaken ``cols``, the one of highest IoU >= thr (the last on ties); -1."""
    best, m = thr, -1
    for g in cols:
        if not taken[g] and row[g] >= best:
            best, m = row[g], g
    return m


def _match(ious: np.ndarray, gt_ignore: tuple[bool, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted detections at every IoU threshold.

    Args:
        ious: (D, G) IoU of detections (by decreasing score) and ground truth.
        gt_ignore: (G,) ground truth that is ignored in this area range.

    Returns:
        (T, D) matched flags and (T, D) "matched an ignored ground truth" flags.
    """
    num_dt, num_gt = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), num_dt), dtype=bool)
    on_ignored = np.zeros((len(IOU_THRESHOLDS), num_dt), dtype=bool)
    if num_gt == 0:
        return matched, on_ignored
    rows = ious.tolist()  # plain floats: these loops are short, numpy calls cost more
    regular = [g for g in range(num_gt) if not gt_ignore[g]]
    ignored = [g for g in range(num_gt) if gt_ignore[g]]
    for t, thr in enumerate(IOU_THRESHOLDS.tolist()):
        thr = min(thr, 1 - 1e-10)
        taken = [False] * num_gt
        for d, row in enumerate(rows):
            # a regular ground truth wins over an ignored one whatever their IoUs
            m = _best(row, regular, taken, thr)
            if m < 0:
                m = _best(row, ignored, taken, thr)
            if m >= 0:
                taken[m] = True
                matched[t, d] = True
                on_ignored[t, d] = gt_ignore[m]
    return matched, on_ignored


def _precision_recall(
    scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """(T, R) interpolated precision and (T,) recall of one category and area range."""
    order = np.argsort(-scores, kind="mergesort")
    tps = (matched & ~ignored)[:, order]
    fps = (~matched & ~ignored)[:, order]
    tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
    num_thr, num_dt = tps.shape
    precision = np.zeros((num_thr, len(RECALL_THRESHOLDS)))
    recall = np.zeros(num_thr)
    for t in range(num_thr):
        rc = tp_sum[t] / num_gt
        recall[t] = rc[-1] if num_dt else 0.0
        pr = tp_sum[t] / (tp_sum[t] + fp_sum[t] + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # best precision at any higher recall
        inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        valid = inds < num_dt
        # past the highest recall reached, precision stays 0 (the first miss ends the fill)
        stop = int(np.argmin(valid)) if not valid.all() else len(inds)
        precision[t, :stop] = pr[inds[:stop]]
    return precision, recall


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _summarize(
    precision: np.ndarray, recall: np.ndarray, groups: list[list[int]], max_dets: str
) -> dict[str, float]:
    i50 = np.where(IOU_THRESHOLDS == 0.5)[0]
    i75 = np.where(IOU_THRESHOLDS == 0.75)[0]
    metrics = {
        "AP": _mean_valid(precision[..., 0]),
        "AP50": _mean_valid(precision[i50][..., 0]),
        "AP75": _mean_valid(precision[i75][..., 0]),
        "APs": _mean_valid(precision[..., 1]),
        "APm": _mean_valid(precision[..., 2]),
        "APl": _mean_valid(precision[..., 3]),
    }
    for name, group in zip(("APr", "APc", "APf"), groups):
        metrics[name] = _mean_valid(precision[:, :, group, 0])
    metrics[f"AR@{max_dets}"] = _mean_valid(recall[:, :, 0])
    for a, suffix in enumerate(("s", "m", "l"), start=1):
        metrics[f"AR{suffix}@{max_dets}"] = _mean_valid(recall[:, :, a])
    return metrics


def evaluate_lvis(
    lvis_gt: dict, results: Sequence[dict], iou_type: str = "segm", max_dets: int = 300
) -> LVISEvalResult:
    """Evaluate LVIS-format results against an LVIS-format ground truth.

    Args:
        lvis_gt: the LVIS json as a dict: "images" (with "id", "height", "width",
            "neg_category_ids", "not_exhaustive_category_ids"), "annotations" (with
            "image_id", "category_id", "bbox" XYWH, "area", "segmentation" for "segm") and
            "categories" (with "id" and "frequency" in "r", "c", "f").
        results: records with "image_id", "category_id" (dataset ids), "score" and "bbox"
            (XYWH) for "bbox" or "segmentation" (RLE or polygons) for "segm". A detection's
            area is w * h for "bbox" and its mask area for "segm".
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image (highest scores); negative keeps all.

    Returns:
        An `LVISEvalResult`.

    Raises:
        ValueError: unknown ``iou_type``; malformed ground truth; a result whose image or
            category is not in the ground truth, or that lacks its geometry.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    images, cat_ids, groups = _check_gt(lvis_gt)
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    gts = _index_gt(lvis_gt, images, set(cat_ids), iou_type)
    dts = _index_dt(limit_dets_per_image(results, max_dets), images, set(cat_ids), iou_type)

    areas = list(AREA_RANGES.values())
    # per (category index, area index): lists of scores, matched, ignored, and #gt
    acc: dict[tuple[int, int], list] = defaultdict(lambda: [[], [], [], 0])
    cats_by_image: dict[Any, set] = defaultdict(set)
    for img_id, cat_id in list(gts) + list(dts):
        cats_by_image[img_id].add(cat_id)
    for img_id in tqdm(sorted(cats_by_image), desc="LVIS evaluation", disable=None, leave=False):
        img = images[img_id]
        present = {c for c in cats_by_image[img_id] if (img_id, c) in gts}
        negative = set(img.get("neg_category_ids", []))
        not_exhaustive = set(img.get("not_exhaustive_category_ids", []))
        for cat_id in sorted(cats_by_image[img_id]):
            gt = gts.get((img_id, cat_id), [])
            dt = dts.get((img_id, cat_id), [])
            if cat_id not in present and cat_id not in negative:
                dt = []  # federated: nothing is known about this category in this image
            if not gt and not dt:
                continue
            order = np.argsort([-d["score"] for d in dt], kind="mergesort")
            dt = [dt[i] for i in order]
            ious = np.zeros((len(dt), len(gt)))
            if dt and gt:
                ious = np.asarray(
                    mask_util.iou(
                        [d["geometry"] for d in dt], [g["geometry"] for g in gt], [0] * len(gt)
                    ),
                    dtype=np.float64,
                ).reshape(len(dt), len(gt))
            gt_areas = np.array([g["area"] for g in gt], dtype=np.float64)
            gt_flag = np.array([g["ignore"] for g in gt], dtype=bool)
            dt_areas = np.array([d["area"] for d in dt], dtype=np.float64)
            scores = np.array([d["score"] for d in dt], dtype=np.float64)
            cache: dict[tuple[bool, ...], tuple[np.ndarray, np.ndarray]] = {}
            for a, (lo, hi) in enumerate(areas):
                gt_ignore = tuple((gt_flag | (gt_areas < lo) | (gt_areas > hi)).tolist())
                if gt_ignore not in cache:  # areas often ignore the same ground truth
                    cache[gt_ignore] = _match(ious, gt_ignore)
                matched, ignored = cache[gt_ignore]
                # unmatched detections outside the area range, or of a class that is not
                # exhaustively annotated in this image, are ignored too
                if cat_id in not_exhaustive:
                    ignored = ignored | ~matched
                else:
                    ignored = ignored | (~matched & ((dt_areas < lo) | (dt_areas > hi)))
                entry = acc[cat_index[cat_id], a]
                entry[0].append(scores)
                entry[1].append(matched)
                entry[2].append(ignored)
                entry[3] += len(gt_ignore) - sum(gt_ignore)

    num_t, num_r, num_k, num_a = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(cat_ids), 4
    precision = -np.ones((num_t, num_r, num_k, num_a))
    recall = -np.ones((num_t, num_k, num_a))
    for (k, a), (scores, matched, ignored, num_gt) in acc.items():
        if num_gt == 0:
            continue
        precision[:, :, k, a], recall[:, k, a] = _precision_recall(
            np.concatenate(scores), np.concatenate(matched, 1), np.concatenate(ignored, 1), num_gt
        )
    metrics = _summarize(precision, recall, groups, str(max_dets) if max_dets >= 0 else "all")
    return LVISEvalResult(precision=precision, recall=recall, cat_ids=cat_ids, metrics=metrics)
