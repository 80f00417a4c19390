"""Per-class detection report: counts, precision/recall, AP, PR curves and a confusion matrix.

A Heron extension (Detectron2 has no counterpart). Definitions, for IoU threshold ``t`` and
score threshold ``s``:

- Ground truth: the non-crowd annotations of the images that were processed (crowd
  annotations are dropped: they are neither counted nor matched). Images never processed
  do not count.
- Per-class matching (AP, PR curve, precision and recall): in each image, the detections of
  class c, by decreasing score, each take the not yet matched class-c ground truth of
  highest IoU, if that IoU is >= t (true positive); otherwise they are false positives.
- PR curve: all class-c detections of all images by decreasing score (ties keep image order,
  then in-image order); precision = TP / (TP + FP) and recall = TP / #gt after each one.
- AP: all-point interpolation (PASCAL VOC 2010 and later): the area under the precision
  envelope (at each recall, the best precision at that or any higher recall), i.e.
  sum over the recall steps of (r_i - r_{i-1}) * envelope(r_i). NaN for a class without
  ground truth, 0 for a class with ground truth and no detection. mAP averages the classes
  that have ground truth.
- Precision and recall at ``s``: over the detections with score >= s (the greedy matching
  makes their outcome independent of lower-scored ones). The summary values pool all
  classes (micro average): sum TP / sum detections and sum TP / sum ground truth.
- Confusion matrix, (K + 1) x (K + 1) with K classes and index K for background: rows are
  the true class (K: no object, i.e. a false positive), columns the predicted class (K:
  nothing predicted, i.e. a missed object). In each image the detections with score >= s,
  by decreasing score and regardless of class, each take the not yet matched ground truth
  of highest IoU >= t (any class); a match adds 1 to [gt class, predicted class], an
  unmatched detection to [K, predicted class], an unmatched ground truth to [gt class, K].
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.evaluation.evaluator import DatasetEvaluator
from heron.structures.boxes import Boxes, BoxMode, pairwise_iou
from heron.utils import comm
from heron.utils.file_io import PathManager

__all__ = [
    "DetectionReportEvaluator",
    "all_point_average_precision",
    "confusion_matrix",
    "greedy_match",
]

logger = logging.getLogger(__name__)


def _iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes (N, 4) and (M, 4)."""
    if len(boxes1) == 0 or len(boxes2) == 0:
        return np.zeros((len(boxes1), len(boxes2)))
    return pairwise_iou(Boxes(torch.from_numpy(boxes1)), Boxes(torch.from_numpy(boxes2))).numpy()


def greedy_match(ious: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Match detections (rows, by decreasing score) to ground truth (columns) greedily.

    Each detection in turn takes the unmatched ground truth of highest IoU, if that IoU is
    >= ``iou_threshold`` (the first such column on ties).

    Args:
        ious: (D, G) IoU of the score-sorted detections with the ground truth.
        iou_threshold: minimum IoU of a match.

    Returns:
        (D,) int64: the matched column of each detection, -1 when unmatched.
    """
    num_dt, num_gt = ious.shape
    matches = np.full(num_dt, -1, dtype=np.int64)
    taken = np.zeros(num_gt, dtype=bool)
    if num_gt == 0:
        return matches
    for d in range(num_dt):
        candidates = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            matches[d] = g
            taken[g] = True
    return matches


def all_point_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope of a PR curve (all-point interpolation).

    Args:
        recall: (N,) non-decreasing recall after each detection.
        precision: (N,) precision after each detection.

    Returns:
        sum_i (r_i - r_{i-1}) * max(precision at recall >= r_i), with r_0 = 0; 0 for N = 0.
    """
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def confusion_matrix(
    gt_classes: np.ndarray,
    pred_classes: np.ndarray,
    ious: np.ndarray,
    num_classes: int,
    iou_threshold: float,
) -> np.ndarray:
    """Confusion matrix of one image (see the module docstring for the rule).

    Args:
        gt_classes: (G,) ground-truth classes in [0, K).
        pred_classes: (D,) predicted classes in [0, K), by decreasing score.
        ious: (D, G) IoU of detections and ground truth.
        num_classes: K.
        iou_threshold: minimum IoU of a match.

    Returns:
        (K + 1, K + 1) int64 counts; row/column K is background.
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    matches = greedy_match(ious, iou_threshold)
    for d, g in enumerate(matches):
        row = gt_classes[g] if g >= 0 else num_classes
        matrix[row, pred_classes[d]] += 1
    missed = np.ones(len(gt_classes), dtype=bool)
    missed[matches[matches >= 0]] = False
    np.add.at(matrix, (gt_classes[missed], num_classes), 1)
    return matrix


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


class DetectionReportEvaluator(DatasetEvaluator):
    """Writes a per-class detection report (``report.json``, ``pr_curves.png``,
    ``confusion_matrix.png``) and returns its summary.

    Results: ``{"report": {"mAP50": ..., "precision": ..., "recall": ...}}`` in percent
    (the key is ``mAP<100 * iou_threshold>``); ``report.json`` holds fractions in [0, 1]
    and null where a value is undefined. See the module docstring for the definitions.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        *,
        distributed: bool = True,
    ) -> None:
        """
        Args:
            dataset_name: a registered dataset; its dicts give the ground truth
                (``annotations`` with ``bbox``, ``bbox_mode``, ``category_id``, ``iscrowd``)
                by ``image_id``, and ``thing_classes`` in its metadata names the classes.
            output_dir: where the report files are written.
            iou_threshold: minimum IoU of a match, in (0, 1].
            score_threshold: detections below it are left out of the precision and recall
                at the threshold and of the confusion matrix.
            distributed: gather predictions from all processes before evaluating.
        """
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._iou_threshold = float(iou_threshold)
        self._score_threshold = float(score_threshold)
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Record the ``instances`` (``pred_boxes``, ``scores``, ``pred_classes``) per image."""
        for input_per_image, output in zip(inputs, outputs):
            if "instances" not in output:
                continue
            instances = output["instances"].to(torch.device("cpu"))
            self._predictions.append(
                {
                    "image_id": input_per_image["image_id"],
                    "boxes": instances.pred_boxes.tensor.detach().double().numpy(),
                    "scores": instances.scores.detach().double().numpy(),
                    "classes": instances.pred_classes.detach().numpy().astype(np.int64),
                }
            )

    def _ground_truth(self) -> tuple[dict[Any, tuple[np.ndarray, np.ndarray]], list[str]]:
        """image id -> ((G, 4) XYXY boxes, (G,) classes) of non-crowd objects; class names."""
        gt = {}
        max_class = -1
        for record in DatasetCatalog.get(self._dataset_name):
            boxes, classes = [], []
            for obj in record.get("annotations", []):
                if obj.get("iscrowd", 0):
                    continue
                boxes.append(BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYXY_ABS))
                classes.append(int(obj["category_id"]))
            classes_arr = np.asarray(classes, dtype=np.int64)
            max_class = max(max_class, int(classes_arr.max(initial=-1)))
            gt[record["image_id"]] = (
                np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                classes_arr,
            )
        names = MetadataCatalog.get(self._dataset_name).get("thing_classes")
        if names is None:
            names = [f"class_{k}" for k in range(max_class + 1)]
        if max_class >= len(names):
            raise ValueError(
                f"dataset {self._dataset_name!r} has an annotation of category_id {max_class}, "
                f"but its metadata thing_classes has only {len(names)} classes"
            )
        return gt, list(names)

    def evaluate(self) -> dict[str, Any]:
        """Gather the predictions, write the report files, return the summary.

        Raises:
            ValueError: a prediction's image is not in the dataset, or its class is not in
                [0, number of classes).
        """
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning("[DetectionReportEvaluator] Did not receive valid predictions.")
        gt, names = self._ground_truth()
        num_classes = len(names)
        per_image = []
        for pred in predictions:
            if pred["image_id"] not in gt:
                raise ValueError(
                    f"a prediction has image_id {pred['image_id']!r}, which is not in dataset "
                    f"{self._dataset_name!r}"
                )
            bad = (pred["classes"] < 0) | (pred["classes"] >= num_classes)
            if bad.any():
                raise ValueError(
                    f"a prediction for image_id {pred['image_id']!r} has class "
                    f"{int(pred['classes'][bad][0])}; expected 0..{num_classes - 1}"
                )
            order = np.argsort(-pred["scores"], kind="stable")
            boxes, classes = gt[pred["image_id"]]
            per_image.append(
                (
                    pred["boxes"][order],
                    pred["scores"][order],
                    pred["classes"][order],
                    boxes,
                    classes,
                )
            )
        report = self._build_report(per_image, names)
        self._write(report)
        summary = report["summary"]
        key = f"mAP{round(100 * self._iou_threshold)}"
        return {
            "report": {
                key: _percent(summary["mAP"]),
                "precision": _percent(summary["precision"]),
                "recall": _percent(summary["recall"]),
            }
        }

    def _build_report(self, per_image: list[tuple], names: list[str]) -> dict[str, Any]:
        num_classes = len(names)
        thr, s_thr = self._iou_threshold, self._score_threshold
        # per class: scores and TP flags of all detections (image order), #gt
        scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        tps: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        num_gt = np.zeros(num_classes, dtype=np.int64)
        matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
        for dt_boxes, dt_scores, dt_classes, gt_boxes, gt_classes in per_image:
            num_gt += np.bincount(gt_classes, minlength=num_classes)[:num_classes]
            ious = _iou(dt_boxes, gt_boxes)
            for c in np.unique(dt_classes):
                dt_c, gt_c = dt_classes == c, gt_classes == c
                matches = greedy_match(ious[dt_c][:, gt_c], thr)
                scores[c].append(dt_scores[dt_c])
                tps[c].append(matches >= 0)
            keep = dt_scores >= s_thr
            matrix += confusion_matrix(gt_classes, dt_classes[keep], ious[keep], num_classes, thr)
        classes = []
        for c, name in enumerate(names):
            s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
            tp = np.concatenate(tps[c]) if tps[c] else np.zeros(0, dtype=bool)
            order = np.argsort(-s, kind="stable")
            s, tp = s[order], tp[order]
            tp_sum, fp_sum = np.cumsum(tp), np.cumsum(~tp)
            n = int(num_gt[c])
            recall = tp_sum / n if n else np.full(len(s), math.nan)
            precision = tp_sum / np.maximum(tp_sum + fp_sum, 1)
            ap = all_point_average_precision(recall, precision) if n else math.nan
            above = s >= s_thr
            tp_at, det_at = int(tp[above].sum()), int(above.sum())
            classes.append(
                {
                    "name": name,
                    "num_gt": n,
                    "num_detections": len(s),
                    "num_detections_above_threshold": det_at,
                    "true_positives_above_threshold": tp_at,
                    "precision": tp_at / det_at if det_at else math.nan,
                    "recall": tp_at / n if n else math.nan,
                    "ap": ap,
                    "pr_curve": {
                        "recall": recall.tolist(),
                        "precision": precision.tolist(),
                        "score": s.tolist(),
                    },
                }
            )
        aps = [c["ap"] for c in classes if not math.isnan(c["ap"])]
        total_tp = sum(c["true_positives_above_threshold"] for c in classes)
        total_det = sum(c["num_detections_above_threshold"] for c in classes)
        total_gt = int(num_gt.sum())
        summary = {
            "mAP": float(np.mean(aps)) if aps else math.nan,
            "precision": total_tp / total_det if total_det else math.nan,
            "recall": total_tp / total_gt if total_gt else math.nan,
        }
        return {
            "iou_threshold": thr,
            "score_threshold": s_thr,
            "num_images": len(per_image),
            "summary": summary,
            "classes": classes,
            "confusion_matrix": {
                "labels": [*names, "background"],
                "rows": "ground truth class (background: false positive)",
                "columns": "predicted class (background: missed)",
                "matrix": matrix.tolist(),
            },
        }

    def _write(self, report: dict[str, Any]) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "report.json")
        with PathManager.open(path, "w") as f:
            json.dump(_json_safe(report), f, indent=1, allow_nan=False)
        logger.info("Detection report written to %s", path)
        _save(_plot_pr_curves(report), os.path.join(self._output_dir, "pr_curves.png"))
        _save(
            _plot_confusion_matrix(report), os.path.join(self._output_dir, "confusion_matrix.png")
        )


def _percent(value: float) -> float:
    return value * 100 if not math.isnan(value) else math.nan


def _json_safe(obj: Any) -> Any:
    """Replace NaN by None (JSON null), recursively."""
    if isinstance(obj, float):
        return _nan_to_none(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        return [_json_safe(v) for v in obj]
    return obj


def _plot_pr_curves(report: dict[str, Any]) -> Any:
    """A figure with the interpolated PR curve (the precision envelope, whose area is the AP)
    of every class that has ground truth."""
    from matplotlib.figure import Figure  # no pyplot: the global backend is left alone

    fig = Figure(figsize=(7, 6), dpi=100)
    ax = fig.add_subplot()
    drawn = [c for c in report["classes"] if c["num_gt"] > 0]
    for cls in drawn:
        curve = cls["pr_curve"]
        envelope = np.maximum.accumulate(np.asarray(curve["precision"])[::-1])[::-1].tolist()
        # the envelope at r_i holds on (r_{i-1}, r_i]: a "pre" step from recall 0
        recall = [0.0, *curve["recall"]]
        precision = [envelope[0] if envelope else 0.0, *envelope]
        ax.step(recall, precision, where="pre", label=f"{cls['name']} (AP {cls['ap']:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(
        f"Precision-recall at IoU {report['iou_threshold']:g}, mAP {report['summary']['mAP']:.3f}"
    )
    ax.grid(True, alpha=0.3)
    if 0 < len(drawn) <= 20:  # a legend of hundreds of classes hides the plot
        ax.legend(loc="lower left", fontsize="small")
    return fig


def _plot_confusion_matrix(report: dict[str, Any]) -> Any:
    """A figure of the confusion matrix, rows normalized for the colors, counts written in."""
    from matplotlib.figure import Figure

    labels = report["confusion_matrix"]["labels"]
    matrix = np.asarray(report["confusion_matrix"]["matrix"], dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = min(4 + 0.5 * len(labels), 30)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                color = "white" if normalized[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(count)}", ha="center", va="center", color=color)
    ax.set_xlabel("predicted class (background: missed)")
    ax.set_ylabel("true class (background: false positive)")
    ax.set_title(
        f"Confusion matrix (IoU >= {report['iou_threshold']:g}, "
        f"score >= {report['score_threshold']:g})"
    )
    fig.tight_layout()
    return fig


def _save(fig: Any, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with PathManager.open(path, "wb") as f:
        fig.savefig(f, format="png")
