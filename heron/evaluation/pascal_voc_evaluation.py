"""PASCAL VOC detection evaluation: per-class AP from VOC XML annotations.

The evaluator writes each class's detections in the VOC devkit's text format (one line per
box: ``image_id score xmin ymin xmax ymax``) and scores them with :func:`voc_eval`, a Python
version of the devkit's AP code (the same one Detectron2 uses; results are close to, but not
identical with, the official Matlab code). Boxes follow VOC's inclusive pixel convention:
a box's width is ``xmax - xmin + 1``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections import OrderedDict, defaultdict
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from heron.data.catalog import MetadataCatalog
from heron.evaluation.evaluator import DatasetEvaluator
from heron.utils import comm
from heron.utils.file_io import PathManager

__all__ = ["PascalVOCDetectionEvaluator", "parse_rec", "voc_ap", "voc_eval"]

logger = logging.getLogger(__name__)


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """Evaluates box AP on a PASCAL VOC split at IoU 0.50:0.95 (step 0.05).

    The 2007 datasets use VOC2007's 11-point AP, others the area under the interpolated
    precision/recall curve. Objects marked "difficult" neither count as positives nor make
    a detection false. ``evaluate`` gathers from all processes, so every process must call it.
    """

    def __init__(self, dataset_name: str) -> None:
        """
        Args:
            dataset_name: a VOC dataset registered with ``register_pascal_voc`` (its
                metadata has ``dirname``, ``split``, ``year`` and ``thing_classes``).
        """
        self._dataset_name = dataset_name
        meta = MetadataCatalog.get(dataset_name)
        for key in ("dirname", "split", "year", "thing_classes"):
            if meta.get(key) is None:
                raise KeyError(f"metadata of dataset {dataset_name!r} has no {key!r}")
        self._anno_file_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
        self._image_set_path = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
        self._class_names = list(meta.thing_classes)
        if meta.year not in (2007, 2012):
            raise ValueError(
                f"metadata 'year' of dataset {dataset_name!r} must be 2007 or 2012, "
                f"got {meta.year!r}"
            )
        self._is_2007 = meta.year == 2007
        self._predictions: defaultdict[int, list[str]] = defaultdict(list)

    def reset(self) -> None:
        self._predictions = defaultdict(list)  # class id -> detection lines

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Record each output's ``instances`` (pred_boxes XYXY, scores, pred_classes) as lines."""
        for input_per_image, output in zip(inputs, outputs):
            image_id = input_per_image["image_id"]
            instances = output["instances"].to(torch.device("cpu"))
            boxes = instances.pred_boxes.tensor.numpy()
            scores = instances.scores.tolist()
            classes = instances.pred_classes.tolist()
            for box, score, cls in zip(boxes, scores, classes):
                xmin, ymin, xmax, ymax = (float(v) for v in box)
                # Undo load_voc_instances' -1 on xmin/ymin: back to VOC's 1-based pixels.
                xmin += 1
                ymin += 1
                self._predictions[cls].append(
                    f"{image_id} {score:.3f} {xmin:.1f} {ymin:.1f} {xmax:.1f} {ymax:.1f}"
                )

    def evaluate(self) -> dict[str, dict[str, float]] | None:
        """Compute per-class AP at IoU 0.50, 0.55, ..., 0.95 and average over classes.

        Returns:
            ``{"bbox": {"AP", "AP50", "AP75"}}`` in percent on the main process (AP is the mean
            over the ten thresholds), None elsewhere.
        """
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions: defaultdict[int, list[str]] = defaultdict(list)
        for predictions_per_rank in all_predictions:
            for cls_id, lines in predictions_per_rank.items():
                predictions[cls_id].extend(lines)

        logger.info(
            "Evaluating %s using %d metric. Note that results do not use the official Matlab API.",
            self._dataset_name,
            2007 if self._is_2007 else 2012,
        )
        aps: defaultdict[int, list[float]] = defaultdict(list)  # IoU percent -> AP per class
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as dirname:
            res_file_template = os.path.join(dirname, "{}.txt")
            for cls_id, cls_name in enumerate(self._class_names):
                with open(res_file_template.format(cls_name), "w") as f:
                    f.write("\n".join(predictions.get(cls_id, [""])))
                for thresh in range(50, 100, 5):
                    _, _, ap = voc_eval(
                        res_file_template,
                        self._anno_file_template,
                        self._image_set_path,
                        cls_name,
                        ovthresh=thresh / 100.0,
                        use_07_metric=self._is_2007,
                    )
                    aps[thresh].append(ap * 100)

        mean_ap = {iou: float(np.mean(values)) for iou, values in aps.items()}
        return OrderedDict(
            {
                "bbox": {
                    "AP": float(np.mean(list(mean_ap.values()))),
                    "AP50": mean_ap[50],
                    "AP75": mean_ap[75],
                }
            }
        )


def _text(node: ET.Element, tag: str) -> str | None:
    found = node.find(tag)
    return None if found is None or found.text is None else found.text.strip()


@lru_cache(maxsize=8192)
def _parse_rec_cached(filename: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    # keyed on (mtime, size) as well as the name, so an edited file is read again
    with PathManager.open(filename, "r") as f:
        try:
            tree = ET.parse(f)
        except ET.ParseError as e:
            raise ValueError(f"{filename}: malformed XML ({e})") from None
    objects = []
    for index, obj in enumerate(tree.findall("object")):
        name = _text(obj, "name")
        bndbox = obj.find("bndbox")
        if name is None or bndbox is None:
            raise ValueError(f"{filename}: object #{index} needs <name> and <bndbox>")
        bbox = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            value = _text(bndbox, tag)
            try:
                bbox.append(float(value))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(
                    f"{filename}: object #{index} <bndbox><{tag}> must be a number, got {value!r}"
                ) from None
        objects.append(
            {
                "name": name,
                "pose": _text(obj, "pose"),
                "truncated": int(_text(obj, "truncated") or 0),
                "difficult": int(_text(obj, "difficult") or 0),
                "bbox": bbox,
            }
        )
    return tuple(objects)


def parse_rec(filename: str) -> list[dict[str, Any]]:
    """Read the objects of one VOC annotation XML.

    Returns:
        One dict per <object>: "name", "pose" (or None), "truncated" and "difficult"
        (int, 0 when the tag is missing), "bbox" [xmin, ymin, xmax, ymax] in VOC's 1-based
        inclusive pixels, as written in the file.
    """
    local = PathManager.get_local_path(filename)
    stat = os.stat(local)
    return [dict(obj) for obj in _parse_rec_cached(local, stat.st_mtime_ns, stat.st_size)]


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a precision/recall curve.

    Args:
        rec: (D,) recall after each detection (non-decreasing).
        prec: (D,) precision after each detection.
        use_07_metric: VOC2007's 11-point AP: the mean over t in {0, 0.1, ..., 1} of the
            highest precision at recall >= t (0 if none). Otherwise the area under the curve
            made monotone (each precision replaced by the highest at equal or larger recall).
    """
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            reached = rec >= t
            ap += (np.max(prec[reached]) if reached.any() else 0.0) / 11.0
        return float(ap)
    # sentinels: recall 0 and 1 at both ends, with precision 0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.where(mrec[1:] != mrec[:-1])[0]  # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _read_detections(detfile: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``image_id score xmin ymin xmax ymax`` lines -> ids, (D,) scores, (D, 4) boxes."""
    with PathManager.open(detfile, "r") as f:
        rows = [line.strip().split(" ") for line in f if line.strip()]
    for i, row in enumerate(rows):
        if len(row) != 6:
            raise ValueError(f"{detfile}: line {i + 1} needs 6 fields, got {' '.join(row)!r}")
    image_ids = [row[0] for row in rows]
    confidence = np.array([float(row[1]) for row in rows], dtype=np.float64)
    boxes = np.array([[float(v) for v in row[2:]] for row in rows], dtype=np.float64)
    return image_ids, confidence, boxes.reshape(-1, 4)


def _max_overlap(box: np.ndarray, gt_boxes: np.ndarray) -> tuple[float, int]:
    """Best IoU of (4,) box with (G, 4) gt boxes in VOC's inclusive-pixel convention."""
    if gt_boxes.size == 0:
        return -np.inf, -1
    iw = np.maximum(
        np.minimum(gt_boxes[:, 2], box[2]) - np.maximum(gt_boxes[:, 0], box[0]) + 1.0, 0.0
    )
    ih = np.maximum(
        np.minimum(gt_boxes[:, 3], box[3]) - np.maximum(gt_boxes[:, 1], box[1]) + 1.0, 0.0
    )
    inters = iw * ih
    union = (
        (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
        + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0)
        - inters
    )
    overlaps = inters / union
    return float(np.max(overlaps)), int(np.argmax(overlaps))


def voc_eval(
    detpath: str,
    annopath: str,
    imagesetfile: str,
    classname: str,
    ovthresh: float = 0.5,
    use_07_metric: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Score one class's detections against VOC annotations.

    Detections are visited by decreasing score; each is a true positive if its best IoU
    with a ground truth of the class in its image exceeds ``ovthresh`` and that ground
    truth is not yet taken, a false positive if that ground truth is taken or the IoU is at
    most ``ovthresh``, and neither if the best match is "difficult".

    Args:
        detpath: detection file template; ``detpath.format(classname)`` is the file.
        annopath: annotation template; ``annopath.format(image_id)`` is an XML file.
        imagesetfile: text file listing the image ids, one per line.
        classname: the class to evaluate.
        ovthresh: IoU threshold.
        use_07_metric: use VOC2007's 11-point AP (see :func:`voc_ap`).

    Returns:
        rec: (D,) recall after each detection; prec: (D,) precision; ap: float. With no
        non-difficult ground truth the recall is NaN (0 / 0), as in Detectron2.

    Raises:
        KeyError: a detection names an image not in ``imagesetfile``.
    """
    with PathManager.open(imagesetfile, "r") as f:
        imagenames = [line.strip() for line in f]
    class_recs = {}
    npos = 0
    for imagename in imagenames:
        objects = [o for o in parse_rec(annopath.format(imagename)) if o["name"] == classname]
        difficult = np.array([o["difficult"] for o in objects], dtype=bool)
        npos += int(np.sum(~difficult))
        class_recs[imagename] = {
            "bbox": np.array([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4),
            "difficult": difficult,
            "det": [False] * len(objects),
        }

    image_ids, confidence, boxes = _read_detections(detpath.format(classname))
    # numpy's default (non-stable) sort, as Detectron2's voc_eval, so ties rank the same
    sorted_ind = np.argsort(-confidence)
    boxes = boxes[sorted_ind, :]
    image_ids = [image_ids[i] for i in sorted_ind]

    num_dets = len(image_ids)
    tp = np.zeros(num_dets)
    fp = np.zeros(num_dets)
    for d in range(num_dets):
        if image_ids[d] not in class_recs:
            raise KeyError(
                f"{detpath.format(classname)}: detection {d} is on image {image_ids[d]!r}, "
                f"which is not listed in {imagesetfile}"
            )
        record = class_recs[image_ids[d]]
        ovmax, jmax = _max_overlap(boxes[d], record["bbox"])
        if ovmax > ovthresh:
            if not record["difficult"][jmax]:
                if not record["det"][jmax]:
                    tp[d] = 1.0
                    record["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    # eps: the first detections may all match difficult objects (tp + fp == 0)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    with np.errstate(invalid="ignore"):
        ap = voc_ap(rec, prec, use_07_metric)
    return rec, prec, ap
