"""Semantic segmentation evaluation: a confusion matrix over the dataset and the COCO-stuff
metrics (mIoU, fwIoU, mACC, pACC, per-class IoU and accuracy, boundary IoU)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.evaluation.evaluator import DatasetEvaluator
from heron.utils.comm import all_gather, is_main_process, synchronize
from heron.utils.file_io import PathManager

__all__ = ["SemSegEvaluator", "load_image_into_numpy_array"]

logger = logging.getLogger(__name__)


def load_image_into_numpy_array(
    filename: str, copy: bool = False, dtype: np.dtype | str | type | None = None
) -> np.ndarray:
    """Read an image file (through PathManager) into a numpy array.

    Args:
        filename: path or URL of the image.
        copy: always return a new array (otherwise a conversion may share memory).
        dtype: the array's dtype, e.g. ``int`` for label maps; None keeps the file's.

    Returns:
        (H, W) for single-channel images, (H, W, C) otherwise.
    """
    with PathManager.open(filename, "rb") as f, Image.open(f) as img:
        if copy:
            return np.array(img, dtype=dtype, copy=True)
        return np.asarray(img, dtype=dtype)


def _window_min(array: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Minimum over every window of ``length`` consecutive entries along ``axis``.

    Entry i of the result is ``min(array[i : i + length])`` along ``axis`` (only windows that
    fit, so that axis shrinks by ``length - 1``). Minima over power-of-two windows are built
    by doubling, so the cost grows with log(length), not length.
    """
    mins = np.moveaxis(array, axis, 0)
    out_size = mins.shape[0] - length + 1
    covered = 1
    while covered * 2 <= length:
        mins = np.minimum(mins[:-covered], mins[covered:])
        covered *= 2
    # two overlapping power-of-two windows cover [i, i + length)
    shift = length - covered
    out = np.minimum(mins[:out_size], mins[shift : shift + out_size])
    return np.moveaxis(out, 0, axis)


def _mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Return ``mask`` minus its grayscale erosion, Detectron2's boundary map.

    Matches Detectron2's ``SemSegEvaluator._mask_to_boundary``: the image gets a one-pixel
    border of zeros and is eroded ``d = max(1, round(dilation_ratio * diagonal))`` times
    with a 3x3 square kernel (``cv2.erode``). That equals a minimum over the
    (2d + 1) x (2d + 1) window, and 0 wherever the window reaches outside the image. On a
    label map the result is not a binary boundary: a pixel next to a smaller label gets
    the difference of the two labels, and that value is what Detectron2 counts.

    Args:
        mask: (H, W) uint8 label map.
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        (H, W) uint8: ``mask`` minus its erosion; 0 inside uniform regions.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-dimensional (H, W) array, got shape {mask.shape}")
    height, width = mask.shape
    dilation = max(1, round(dilation_ratio * math.sqrt(height**2 + width**2)))
    window = 2 * dilation + 1
    eroded = np.zeros_like(mask)
    if height >= window and width >= window:
        inner = _window_min(_window_min(mask, window, axis=0), window, axis=1)
        eroded[dilation : height - dilation, dilation : width - dilation] = inner
    return mask - eroded


def _confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (prediction, ground truth) pairs: a (N + 1, N + 1) int64 matrix, [pred, gt]."""
    size = num_classes + 1
    counts = np.bincount(size * pred.reshape(-1) + gt.reshape(-1), minlength=size * size)
    return counts.reshape(size, size)


def _iou_and_accuracy(conf_matrix: np.ndarray) -> dict[str, Any]:
    """Per-class IoU and accuracy and their summaries from a [pred, gt] confusion matrix.

    The last row and column are the ignored class and take no part. A class with no
    ground-truth pixel gets NaN IoU and accuracy and is left out of every mean, as in
    Detectron2.
    """
    num_classes = conf_matrix.shape[0] - 1
    acc = np.full(num_classes, np.nan, dtype=np.float64)
    iou = np.full(num_classes, np.nan, dtype=np.float64)
    tp = conf_matrix.diagonal()[:-1].astype(np.float64)
    pos_gt = conf_matrix[:-1, :-1].sum(axis=0).astype(np.float64)
    pos_pred = conf_matrix[:-1, :-1].sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_weights = pos_gt / pos_gt.sum()
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = acc_valid & (union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        return {
            "acc": acc,
            "iou": iou,
            "macc": acc[acc_valid].sum() / acc_valid.sum(),
            "miou": iou[iou_valid].sum() / iou_valid.sum(),
            "fiou": (iou[iou_valid] * class_weights[iou_valid]).sum(),
            "pacc": tp.sum() / pos_gt.sum(),
        }


def _boundary_iou(b_conf_matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU of the boundary maps' confusion matrix; NaN where the union is empty."""
    num_classes = b_conf_matrix.shape[0] - 1
    b_iou = np.full(num_classes, np.nan, dtype=np.float64)
    b_tp = b_conf_matrix.diagonal()[:-1].astype(np.float64)
    b_pos_gt = b_conf_matrix[:-1, :-1].sum(axis=0).astype(np.float64)
    b_pos_pred = b_conf_matrix[:-1, :-1].sum(axis=1).astype(np.float64)
    b_union = b_pos_gt + b_pos_pred - b_tp
    valid = b_union > 0
    b_iou[valid] = b_tp[valid] / b_union[valid]
    return b_iou


class SemSegEvaluator(DatasetEvaluator):
    """Evaluates semantic segmentation with a confusion matrix over the whole dataset.

    Reports, in percent, mIoU, fwIoU, mACC, pACC and per-class "IoU-<class>" and
    "ACC-<class>" (http://cocodataset.org/#stuff-eval), plus "BoundaryIoU-<class>" and
    "min(IoU, B-Iou)-<class>" when the dataset has fewer than 255 classes. The ground truth
    of an input is the dataset record's "sem_seg_file_name" for its "file_name".
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        sem_seg_loading_fn: Callable[..., np.ndarray] = load_image_into_numpy_array,
        num_classes: int | None = None,
        ignore_label: int | None = None,
    ) -> None:
        """
        Args:
            dataset_name: a registered dataset whose records have "file_name" and
                "sem_seg_file_name", and whose metadata has "stuff_classes" and
                "ignore_label" (and optionally "stuff_dataset_id_to_contiguous_id").
            distributed: gather the processes' results and evaluate on the main process;
                False evaluates what this process saw.
            output_dir: where to write "sem_seg_predictions.json" and
                "sem_seg_evaluation.pth"; None writes nothing.
            sem_seg_loading_fn: reads a label file; called as ``fn(path, dtype=int)``.
            num_classes: deprecated (taken from metadata); must match it when given.
            ignore_label: deprecated; overrides the metadata's "ignore_label".
        """
        if num_classes is not None:
            logger.warning("SemSegEvaluator(num_classes) is deprecated: it comes from metadata.")
        if ignore_label is not None:
            logger.warning("SemSegEvaluator(ignore_label) is deprecated: it comes from metadata.")
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self.input_file_to_gt_file = {
            record["file_name"]: record["sem_seg_file_name"]
            for record in DatasetCatalog.get(dataset_name)
        }
        meta = MetadataCatalog.get(dataset_name)
        c2d = meta.get("stuff_dataset_id_to_contiguous_id")
        self._contiguous_id_to_dataset_id = None if c2d is None else {v: k for k, v in c2d.items()}
        self._class_names = list(meta.stuff_classes)
        self.sem_seg_loading_fn = sem_seg_loading_fn
        self._num_classes = len(self._class_names)
        if num_classes is not None and num_classes != self._num_classes:
            raise ValueError(
                f"num_classes={num_classes} differs from the {self._num_classes} stuff_classes "
                f"of dataset {dataset_name!r}"
            )
        self._ignore_label = ignore_label if ignore_label is not None else meta.ignore_label
        # Boundary maps are uint8 label maps, as in Detectron2 (cv2.erode needs uint8).
        self._compute_boundary_iou = self._num_classes < np.iinfo(np.uint8).max
        if not self._compute_boundary_iou:
            logger.warning(
                "Dataset %s has %d classes; boundary IoU needs fewer than %d and is skipped.",
                dataset_name,
                self._num_classes,
                np.iinfo(np.uint8).max,
            )
        self.reset()

    def reset(self) -> None:
        size = self._num_classes + 1
        self._conf_matrix = np.zeros((size, size), dtype=np.int64)
        self._b_conf_matrix = np.zeros((size, size), dtype=np.int64)
        self._predictions: list[dict[str, Any]] = []

    def _load_gt(self, file_name: str) -> np.ndarray:
        """Read the ground truth of input ``file_name``; ignored pixels become class N."""
        if file_name not in self.input_file_to_gt_file:
            raise KeyError(
                f"Input file_name {file_name!r} is not a record of dataset "
                f"{self._dataset_name!r} (no sem_seg_file_name for it)"
            )
        gt_filename = self.input_file_to_gt_file[file_name]
        gt = np.array(self.sem_seg_loading_fn(gt_filename, dtype=int), dtype=np.int64)
        gt[gt == self._ignore_label] = self._num_classes
        bad = (gt < 0) | (gt > self._num_classes)
        if bad.any():
            raise ValueError(
                f"Ground truth {gt_filename!r} has labels {np.unique(gt[bad])[:5].tolist()} "
                f"outside [0, {self._num_classes}) that are not ignore_label "
                f"{self._ignore_label}"
            )
        return gt

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Add one batch to the confusion matrices.

        Args:
            inputs: dicts with "file_name", a record of the dataset.
            outputs: dicts with "sem_seg", (C, H, W) per-class scores at the ground truth's
                resolution; the prediction is their argmax.
        """
        for input_, output in zip(inputs, outputs):
            file_name = input_["file_name"]
            pred = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)
            gt = self._load_gt(file_name)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"Prediction for {file_name!r} has size {pred.shape} but its ground truth "
                    f"{self.input_file_to_gt_file[file_name]!r} has size {gt.shape}"
                )
            self._conf_matrix += _confusion_matrix(pred, gt, self._num_classes)
            if self._compute_boundary_iou:
                b_gt = _mask_to_boundary(gt.astype(np.uint8)).astype(np.int64)
                b_pred = _mask_to_boundary(pred.astype(np.uint8)).astype(np.int64)
                self._b_conf_matrix += _confusion_matrix(b_pred, b_gt, self._num_classes)
            self._predictions.extend(self.encode_json_sem_seg(pred, file_name))

    def _gather(self) -> bool:
        """Sum the processes' matrices onto the main process; False on the others."""
        synchronize()
        conf_matrices = all_gather(self._conf_matrix)
        b_conf_matrices = all_gather(self._b_conf_matrix)
        predictions = all_gather(self._predictions)
        if not is_main_process():
            return False
        self._conf_matrix = np.sum(conf_matrices, axis=0)
        self._b_conf_matrix = np.sum(b_conf_matrices, axis=0)
        self._predictions = list(itertools.chain(*predictions))
        return True

    def evaluate(self) -> dict[str, Any] | None:
        """Return {"sem_seg": metrics in percent} (None on non-main processes).

        Metrics: mIoU, fwIoU, IoU-<class>, mACC, pACC, ACC-<class>, and with boundary IoU
        BoundaryIoU-<class> and min(IoU, B-Iou)-<class>. Classes absent from the ground
        truth are NaN and left out of the means.
        """
        if self._distributed and not self._gather():
            return None
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "sem_seg_predictions.json")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(self._predictions))

        stats = _iou_and_accuracy(self._conf_matrix)
        iou, acc = stats["iou"], stats["acc"]
        b_iou = _boundary_iou(self._b_conf_matrix) if self._compute_boundary_iou else None
        res: dict[str, float] = {"mIoU": 100 * stats["miou"], "fwIoU": 100 * stats["fiou"]}
        for i, name in enumerate(self._class_names):
            res[f"IoU-{name}"] = 100 * iou[i]
            if b_iou is not None:
                res[f"BoundaryIoU-{name}"] = 100 * b_iou[i]
                # Python's min, as Detectron2: min(nan, x) is nan but min(x, nan) is x
                res[f"min(IoU, B-Iou)-{name}"] = 100 * min(iou[i], b_iou[i])
        res["mACC"] = 100 * stats["macc"]
        res["pACC"] = 100 * stats["pacc"]
        for i, name in enumerate(self._class_names):
            res[f"ACC-{name}"] = 100 * acc[i]
        res = {k: float(v) for k, v in res.items()}

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "sem_seg_evaluation.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(res, f)
        results = OrderedDict({"sem_seg": res})
        logger.info(results)
        return results

    def encode_json_sem_seg(self, sem_seg: np.ndarray, input_file_name: str) -> list[dict]:
        """Encode a label map as COCO-stuff results: one RLE segment per class present.

        See http://cocodataset.org/#format-results.

        Args:
            sem_seg: (H, W) int contiguous class ids.
            input_file_name: the input's "file_name", stored in every segment.

        Returns:
            Dicts with "file_name", "category_id" (the dataset id when the metadata has
            "stuff_dataset_id_to_contiguous_id", else the contiguous id) and
            "segmentation" (RLE with str "counts").
        """
        json_list = []
        for label in np.unique(sem_seg):
            label = int(label)
            if self._contiguous_id_to_dataset_id is not None:
                if label not in self._contiguous_id_to_dataset_id:
                    raise KeyError(
                        f"Predicted label {label} for {input_file_name!r} is not in "
                        f"stuff_dataset_id_to_contiguous_id of dataset {self._dataset_name!r}"
                    )
                dataset_id = self._contiguous_id_to_dataset_id[label]
            else:
                dataset_id = label
            mask = (sem_seg == label).astype(np.uint8)
            rle = mask_util.encode(np.asfortranarray(mask[:, :, None]))[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            json_list.append(
                {"file_name": input_file_name, "category_id": dataset_id, "segmentation": rle}
            )
        return json_list

    def _mask_to_boundary(self, mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
        """See :func:`_mask_to_boundary` (kept as a method, as in Detectron2)."""
        return _mask_to_boundary(mask, dilation_ratio)
