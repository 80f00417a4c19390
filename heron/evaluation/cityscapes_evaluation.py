"""Cityscapes evaluation with the official metrics, computed without ``cityscapesscripts``.

* :class:`CityscapesSemSegEvaluator`: pixel-level IoU and instance-weighted iIoU over the
  19 evaluated classes, and both again over the categories ("_sup"), as
  ``evalPixelLevelSemanticLabeling``.
* :class:`CityscapesInstanceEvaluator`: instance-level AP and AP50 over the 8 instance
  classes, as ``evalInstanceLevelSemanticLabeling``.

The ground truth is read from the dataset's ``gt_dir`` (``<gt_dir>/<city>/*_gtFine_*.png``).
Each prediction is reduced in ``process`` to the statistics the metric needs (a confusion
matrix, match counts), so nothing is written to disk and ``evaluate`` gathers small objects
from every process, which also works across machines. As in Detectron2, every ground-truth
image under ``gt_dir`` must have been processed.
"""

from __future__ import annotations

import glob
import logging
import os
import warnings
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from heron.data.catalog import MetadataCatalog
from heron.data.datasets.cityscapes_labels import CITYSCAPES_LABELS, CityscapesLabel
from heron.evaluation.evaluator import DatasetEvaluator
from heron.utils import comm
from heron.utils.file_io import PathManager

__all__ = ["CityscapesEvaluator", "CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]

logger = logging.getLogger(__name__)

# Label ids in *_labelIds.png are 0..33; predictions outside that range get column 34.
_NUM_IDS = 1 + max(label.id for label in CITYSCAPES_LABELS)
_ID_TO_LABEL = {label.id: label for label in CITYSCAPES_LABELS if label.id >= 0}
_NAME_TO_LABEL = {label.name: label for label in CITYSCAPES_LABELS}
# Evaluated instance classes: person, rider, car, truck, bus, train, motorcycle, bicycle.
_INST_LABELS = [
    label for label in CITYSCAPES_LABELS if label.hasInstances and not label.ignoreInEval
]
_VOID_IDS = [label.id for label in CITYSCAPES_LABELS if label.ignoreInEval]
_EVAL_IDS = [label.id for label in _ID_TO_LABEL.values() if not label.ignoreInEval]

# Mean instance size per class in pixels (from cityscapesScripts' evaluation), the weights
# of the instance-level iIoU.
_AVG_CLASS_SIZE = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}

# Instance AP parameters of the official script (no distance information).
_OVERLAPS = np.arange(0.5, 1.0, 0.05)
_MIN_REGION_SIZE = 100


def _categories() -> dict[str, list[CityscapesLabel]]:
    """Map category name -> its labels with an id, in label-table order."""
    out: dict[str, list[CityscapesLabel]] = {}
    for label in CITYSCAPES_LABELS:
        out.setdefault(label.category, [])
        if label.id >= 0:
            out[label.category].append(label)
    return out


_CATEGORIES = _categories()
# Categories whose every label has instances (human, vehicle): they get an iIoU.
_INST_CATEGORIES = {
    name: [label.id for label in labels]
    for name, labels in _CATEGORIES.items()
    if all(label.hasInstances for label in labels)
}


def _frame_key(path: str) -> str:
    """Return "<city>_<sequence>_<frame>", the part of a Cityscapes file name that names it."""
    parts = os.path.basename(path).split("_")
    if len(parts) < 3:
        raise ValueError(f"{path!r} is not a Cityscapes file name (<city>_<sequence>_<frame>_...)")
    return "_".join(parts[:3])


def _read_png(path: str) -> np.ndarray:
    """Read a single-channel png into an int64 (H, W) array."""
    with PathManager.open(path, "rb") as f, Image.open(f) as img:
        array = np.asarray(img, dtype=np.int64)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label image, got shape {array.shape}")
    return array


class CityscapesEvaluator(DatasetEvaluator):
    """Base class: finds the ground truth of each input under the dataset's ``gt_dir``."""

    _GT_SUFFIX = ""

    def __init__(self, dataset_name: str) -> None:
        """
        Args:
            dataset_name: a registered dataset whose metadata has "gt_dir" (e.g.
                "cityscapes/gtFine/val") and, for instances, "thing_classes".
        """
        self._metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._cpu_device = torch.device("cpu")
        self._gt_files: dict[str, str] | None = None
        self.reset()

    def reset(self) -> None:
        self._per_image: dict[str, Any] = {}

    def _gt_file_index(self) -> dict[str, str]:
        """Map frame key -> ground-truth file, from ``<gt_dir>/*/*<_GT_SUFFIX>``."""
        if self._gt_files is None:
            gt_dir = PathManager.get_local_path(self._metadata.gt_dir)
            files = sorted(glob.glob(os.path.join(gt_dir, "*", "*" + self._GT_SUFFIX)))
            if not files:
                raise ValueError(
                    f"No ground truth *{self._GT_SUFFIX} files in {gt_dir!r}/<city>/ for "
                    f"dataset {self._dataset_name!r}"
                )
            self._gt_files = {_frame_key(f): f for f in files}
        return self._gt_files

    def _gt_file(self, file_name: str) -> str:
        """Return the ground-truth file of input image ``file_name``."""
        key = _frame_key(file_name)
        index = self._gt_file_index()
        if key not in index:
            raise KeyError(
                f"Input file_name {file_name!r} has no *{self._GT_SUFFIX} ground truth in "
                f"{self._metadata.gt_dir!r} (looked for {key}_*)"
            )
        return index[key]

    def _gather_per_image(self) -> dict[str, Any] | None:
        """Collect every process's per-image statistics on the main process.

        Returns None on the other processes. Raises ValueError when a ground-truth image
        under ``gt_dir`` was never processed (the official scripts need a prediction for
        every ground-truth image).
        """
        comm.synchronize()
        gathered = comm.gather(self._per_image, dst=0)
        if not comm.is_main_process():
            return None
        per_image: dict[str, Any] = {}
        for part in gathered:
            per_image.update(part)
        missing = sorted(set(self._gt_file_index()) - set(per_image))
        if missing:
            raise ValueError(
                f"{len(missing)} ground truth images of {self._metadata.gt_dir!r} have no "
                f"prediction, e.g. {missing[:3]}"
            )
        return per_image


# ---------------------------------------------------------------------------------------
# Pixel-level semantic labeling


def _train_id_to_id_lut() -> np.ndarray:
    """Lookup table train id -> label id for the 19 evaluated classes, 255 elsewhere."""
    lut = np.full(256, 255, dtype=np.int64)
    for label in CITYSCAPES_LABELS:
        if not label.ignoreInEval and 0 <= label.trainId < 255:
            lut[label.trainId] = label.id
    return lut


def _semantic_pair_stats(pred: np.ndarray, gt: np.ndarray, inst: np.ndarray) -> dict[str, Any]:
    """Statistics of one image for the pixel-level metrics.

    Args:
        pred: (H, W) int predicted label ids.
        gt: (H, W) int ground-truth label ids (from ``*_labelIds.png``), all in 0..33.
        inst: (H, W) int instance ids (from ``*_instanceIds.png``): label id * 1000 +
            instance index for instances, the label id elsewhere.

    Returns:
        "conf": (34, 35) int64 counts [gt id, pred id], column 34 for predictions outside
        0..33; "tp_w"/"fn_w": (34,) instance-weighted true/false negatives per label id;
        "cat_tp_w"/"cat_fn_w": the same per instance category.
    """
    pred_col = np.where((pred >= 0) & (pred < _NUM_IDS), pred, _NUM_IDS)
    conf = np.bincount(
        (gt * (_NUM_IDS + 1) + pred_col).reshape(-1), minlength=_NUM_IDS * (_NUM_IDS + 1)
    ).reshape(_NUM_IDS, _NUM_IDS + 1)
    tp_w, fn_w = np.zeros(_NUM_IDS), np.zeros(_NUM_IDS)
    cat_tp_w = dict.fromkeys(_INST_CATEGORIES, 0.0)
    cat_fn_w = dict.fromkeys(_INST_CATEGORIES, 0.0)
    cat_masks = {name: np.isin(pred, ids) for name, ids in _INST_CATEGORIES.items()}
    # The official script takes instance ids strictly above 1000.
    for inst_id in np.unique(inst[inst > 1000]):
        label = _ID_TO_LABEL.get(int(inst_id) // 1000)
        if label is None or label.ignoreInEval:
            continue
        mask = inst == inst_id
        size = int(mask.sum())
        weight = _AVG_CLASS_SIZE[label.name] / size
        tp = int((pred[mask] == label.id).sum())
        tp_w[label.id] += tp * weight
        fn_w[label.id] += (size - tp) * weight
        if label.category in cat_masks:
            cat_tp = int((mask & cat_masks[label.category]).sum())
            cat_tp_w[label.category] += cat_tp * weight
            cat_fn_w[label.category] += (size - cat_tp) * weight
    return {"conf": conf, "tp_w": tp_w, "fn_w": fn_w, "cat_tp_w": cat_tp_w, "cat_fn_w": cat_fn_w}


def _iou(tp: float, fp: float, fn: float) -> float:
    denom = tp + fp + fn
    return float("nan") if denom == 0 else float(tp) / denom


def _nan_mean(values: list[float]) -> float:
    valid = [v for v in values if not np.isnan(v)]
    return float(np.mean(valid)) if valid else float("nan")


def _semantic_scores(stats: dict[str, Any]) -> dict[str, float]:
    """Average class/category IoU and iIoU (fractions) from summed per-image statistics."""
    conf = stats["conf"]
    class_iou, class_iiou = [], []
    for label_id in _EVAL_IDS:
        label = _ID_TO_LABEL[label_id]
        tp = conf[label_id, label_id]
        fn = conf[label_id].sum() - tp
        # false positives only on pixels whose ground truth is evaluated
        fp = conf[[i for i in _EVAL_IDS if i != label_id], label_id].sum()
        class_iou.append(_iou(tp, fp, fn))
        if label.hasInstances:
            class_iiou.append(_iou(stats["tp_w"][label_id], fp, stats["fn_w"][label_id]))
    cat_iou, cat_iiou = [], []
    for name, labels in _CATEGORIES.items():
        ids = [label.id for label in labels if not label.ignoreInEval]
        if not ids:
            continue
        others = [i for i in _EVAL_IDS if _ID_TO_LABEL[i].category != name]
        tp = conf[np.ix_(ids, ids)].sum()
        fn = conf[ids].sum() - tp
        fp = conf[np.ix_(others, ids)].sum()
        cat_iou.append(_iou(tp, fp, fn))
        if name in _INST_CATEGORIES:
            inst_ids = _INST_CATEGORIES[name]
            fp = conf[np.ix_(others, inst_ids)].sum()
            cat_iiou.append(_iou(stats["cat_tp_w"][name], fp, stats["cat_fn_w"][name]))
    return {
        "IoU": _nan_mean(class_iou),
        "iIoU": _nan_mean(class_iiou),
        "IoU_sup": _nan_mean(cat_iou),
        "iIoU_sup": _nan_mean(cat_iiou),
    }


class CityscapesSemSegEvaluator(CityscapesEvaluator):
    """Evaluates semantic segmentation on Cityscapes with the official pixel-level metrics.

    Predictions (train ids) become label ids and are compared with ``*_gtFine_labelIds.png``.
    Pixels whose ground truth is ignored in evaluation (``ignoreInEval``) count nowhere: a
    class's false positives are counted on evaluated pixels only.
    iIoU weighs each instance's pixels by the class's mean instance size over its own size
    (``*_gtFine_instanceIds.png``). ``evaluate`` synchronizes; call it on every process.
    """

    _GT_SUFFIX = "_gtFine_labelIds.png"

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Reduce each prediction to its confusion matrix and instance statistics.

        Args:
            inputs: dicts with "file_name", a Cityscapes image "<city>_<seq>_<frame>_*".
            outputs: dicts with "sem_seg", (19, H, W) scores over train ids.
        """
        lut = _train_id_to_id_lut()
        for input_, output in zip(inputs, outputs):
            file_name = input_["file_name"]
            train_ids = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy()
            pred = lut[np.clip(train_ids, 0, 255)]
            gt_file = self._gt_file(file_name)
            gt = _read_png(gt_file)
            inst = _read_png(gt_file[: -len("labelIds.png")] + "instanceIds.png")
            if pred.shape != gt.shape or inst.shape != gt.shape:
                raise ValueError(
                    f"Prediction for {file_name!r} has size {pred.shape} but its ground truth "
                    f"{gt_file!r} has size {gt.shape} (instanceIds {inst.shape})"
                )
            unknown = np.setdiff1d(np.unique(gt), list(_ID_TO_LABEL))
            if unknown.size:
                raise ValueError(f"{gt_file}: unknown label ids {unknown[:5].tolist()}")
            self._per_image[_frame_key(file_name)] = _semantic_pair_stats(pred, gt, inst)

    def evaluate(self) -> dict[str, Any] | None:
        """Return {"sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}} in percent.

        None on processes other than the main one.
        """
        per_image = self._gather_per_image()
        if per_image is None:
            return None
        totals: dict[str, Any] = {}
        for stats in per_image.values():
            for key, value in stats.items():
                if isinstance(value, dict):
                    acc = totals.setdefault(key, dict.fromkeys(value, 0.0))
                    for name, v in value.items():
                        acc[name] += v
                else:
                    totals[key] = totals[key] + value if key in totals else value.copy()
        scores = _semantic_scores(totals)
        ret = OrderedDict(sem_seg={k: 100.0 * v for k, v in scores.items()})
        logger.info(ret)
        return ret


# ---------------------------------------------------------------------------------------
# Instance-level semantic labeling


class _GtInstance(NamedTuple):
    inst_id: int  # value in instanceIds.png; below 1000 for a group region
    pixel_count: int


class _PredInstance(NamedTuple):
    score: float
    pixel_count: int
    void_intersection: int  # pixels on ground truth ignored in evaluation
    matched_gt: list[tuple[_GtInstance, int]]  # same-class gt regions and intersections


def _instance_label_id(value: int) -> int:
    return value // 1000 if value >= 1000 else value


def _image_instances(
    inst: np.ndarray, pred_masks: np.ndarray, pred_label_ids: list[int], scores: list[float]
) -> dict[str, Any]:
    """Ground-truth regions and predictions of one image, grouped by class name.

    Args:
        inst: (H, W) int ground truth from ``*_instanceIds.png``.
        pred_masks: (P, H, W) bool predicted masks.
        pred_label_ids: (P,) Cityscapes label ids of the predictions.
        scores: (P,) confidences.

    Returns:
        {"gt": {class: [_GtInstance]}, "pred": {class: [_PredInstance]}} for the 8
        evaluated classes. Ground truth keeps groups and small regions (they make
        predictions ignorable); empty predictions are dropped, as the official script does.
    """
    names = [label.name for label in _INST_LABELS]
    gt_by_class: dict[str, list[_GtInstance]] = {name: [] for name in names}
    values, counts = np.unique(inst, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
        label = _ID_TO_LABEL.get(_instance_label_id(value))
        if label is not None and label.name in gt_by_class:
            gt_by_class[label.name].append(_GtInstance(value, count))
    void = np.isin(inst, _VOID_IDS)
    pred_by_class: dict[str, list[_PredInstance]] = {name: [] for name in names}
    for mask, label_id, score in zip(pred_masks, pred_label_ids, scores):
        label = _ID_TO_LABEL.get(label_id)
        if label is None or label.name not in pred_by_class:
            continue
        pixel_count = int(mask.sum())
        if pixel_count == 0:
            continue
        hit_values, hit_counts = np.unique(inst[mask], return_counts=True)
        hits = dict(zip(hit_values.tolist(), hit_counts.tolist()))
        matched = [(gt, hits[gt.inst_id]) for gt in gt_by_class[label.name] if gt.inst_id in hits]
        pred_by_class[label.name].append(
            _PredInstance(score, pixel_count, int((void & mask).sum()), matched)
        )
    return {"gt": gt_by_class, "pred": pred_by_class}


def _overlap(gt: _GtInstance, pred: _PredInstance, intersection: int) -> float:
    return intersection / (gt.pixel_count + pred.pixel_count - intersection)


def _collect_scores(
    images: list[dict[str, Any]], name: str, overlap_th: float
) -> tuple[list[float], list[float], int, bool, bool]:
    """Label every ground truth and prediction of one class at one overlap threshold.

    Returns (y_true, y_score, hard false negatives, any gt, any prediction): a matched gt
    gives (1, its best matching score); a further match of the same gt, and a prediction
    matching no gt unless mostly on ignored pixels, give (0, score); an unmatched gt is a
    hard false negative. Overlaps must exceed the threshold strictly.
    """
    y_true: list[float] = []
    y_score: list[float] = []
    hard_fns, have_gt, have_pred = 0, False, False
    for image in images:
        preds = image["pred"][name]
        gts = [
            gt
            for gt in image["gt"][name]
            if gt.inst_id >= 1000 and gt.pixel_count >= _MIN_REGION_SIZE
        ]
        have_gt |= bool(gts)
        have_pred |= bool(preds)
        for gt in gts:
            best = None
            for pred in preds:
                for matched_gt, intersection in pred.matched_gt:
                    if matched_gt != gt or _overlap(gt, pred, intersection) <= overlap_th:
                        continue
                    if best is None:
                        best = pred.score
                    else:  # the lower-scored of two matches is a false positive
                        y_true.append(0)
                        y_score.append(min(best, pred.score))
                        best = max(best, pred.score)
            if best is None:
                hard_fns += 1
            else:
                y_true.append(1)
                y_score.append(best)
        for pred in preds:
            if any(_overlap(gt, pred, i) > overlap_th for gt, i in pred.matched_gt):
                continue
            ignored = pred.void_intersection
            for gt, intersection in pred.matched_gt:
                if gt.inst_id < 1000:  # group region
                    ignored += intersection
                if gt.pixel_count < _MIN_REGION_SIZE:  # counted again if also a group
                    ignored += intersection
            if ignored / pred.pixel_count <= overlap_th:
                y_true.append(0)
                y_score.append(pred.score)
    return y_true, y_score, hard_fns, have_gt, have_pred


def _average_precision(y_true: list[float], y_score: list[float], hard_fns: int) -> float:
    """Area under the step-wise precision-recall curve, as the official Cityscapes script.

    One point per distinct score (predictions scoring at least it), plus a point at recall
    0 with the precision of the highest threshold; each point's precision is weighted by
    half the recall gap between its two neighbours.
    """
    if not y_score:  # nothing matched and every prediction ignored: recall stays 0
        return 0.0
    order = np.argsort(y_score)
    scores_sorted = np.asarray(y_score, dtype=np.float64)[order]
    true_cumsum = np.cumsum(np.asarray(y_true, dtype=np.float64)[order])
    num_examples, num_true = len(scores_sorted), true_cumsum[-1]
    _, first_idxs = np.unique(scores_sorted, return_index=True)
    below = np.concatenate([[0.0], true_cumsum])[first_idxs]  # true examples under each
    tp = num_true - below
    fp = num_examples - first_idxs - tp
    precision = np.append(tp / (tp + fp), 0.0)
    recall = np.append(tp / (num_true + hard_fns), 0.0)
    precision[-1] = precision[-2]
    padded = np.concatenate([[recall[0]], recall, [0.0]])
    step_widths = (padded[:-2] - padded[2:]) / 2
    return float(np.dot(precision, step_widths))


def _instance_ap(images: list[dict[str, Any]]) -> np.ndarray:
    """(8, 10) AP per class and overlap threshold; NaN for a class without ground truth."""
    ap = np.zeros((len(_INST_LABELS), len(_OVERLAPS)))
    for c, label in enumerate(_INST_LABELS):
        for o, overlap_th in enumerate(_OVERLAPS):
            y_true, y_score, hard_fns, have_gt, have_pred = _collect_scores(
                images, label.name, overlap_th
            )
            if have_gt and have_pred:
                ap[c, o] = _average_precision(y_true, y_score, hard_fns)
            else:
                ap[c, o] = 0.0 if have_gt else float("nan")
    return ap


class CityscapesInstanceEvaluator(CityscapesEvaluator):
    """Evaluates instance segmentation on Cityscapes with the official instance-level AP.

    AP averages over the 8 instance classes and the overlaps 0.5:0.95:0.05 (mask IoU
    strictly above the threshold); AP50 uses 0.5 alone. Ground-truth instances under 100
    pixels and group regions are not matched, and unmatched predictions lying mostly on
    them or on pixels ignored in evaluation are not false positives. The ground truth is
    ``*_gtFine_instanceIds.png``. ``evaluate`` synchronizes; call it on every process.
    """

    _GT_SUFFIX = "_gtFine_instanceIds.png"

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Match each image's predicted masks with its ground-truth regions.

        Args:
            inputs: dicts with "file_name", a Cityscapes image "<city>_<seq>_<frame>_*".
            outputs: dicts with "instances" (pred_classes indexing the metadata's
                thing_classes, scores, pred_masks (N, H, W) at the image's resolution).
                An output without "instances" counts as no prediction.
        """
        thing_classes = self._metadata.thing_classes
        for input_, output in zip(inputs, outputs):
            file_name = input_["file_name"]
            gt_file = self._gt_file(file_name)
            inst = _read_png(gt_file)
            masks = np.zeros((0, *inst.shape), dtype=bool)
            label_ids: list[int] = []
            scores: list[float] = []
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                # as Detectron2, which saves masks as uint8 pngs: nonzero after uint8 cast
                masks = instances.pred_masks.numpy().astype(np.uint8) != 0
                if masks.shape[1:] != inst.shape:
                    raise ValueError(
                        f"Predicted masks for {file_name!r} have size {masks.shape[1:]} but "
                        f"its ground truth {gt_file!r} has size {inst.shape}"
                    )
                for cls in instances.pred_classes.tolist():
                    name = thing_classes[cls]
                    if name not in _NAME_TO_LABEL:
                        raise KeyError(
                            f"thing class {name!r} of dataset {self._dataset_name!r} is not a "
                            f"Cityscapes label name"
                        )
                    label_ids.append(_NAME_TO_LABEL[name].id)
                scores = [float(s) for s in instances.scores.tolist()]
            self._per_image[_frame_key(file_name)] = _image_instances(
                inst, masks, label_ids, scores
            )

    def evaluate(self) -> dict[str, Any] | None:
        """Return {"segm": {"AP", "AP50"}} in percent; None on non-main processes."""
        per_image = self._gather_per_image()
        if per_image is None:
            return None
        ap = _instance_ap([per_image[key] for key in sorted(per_image)])
        o50 = np.isclose(_OVERLAPS, 0.5)
        with warnings.catch_warnings():  # all-NaN means (no ground truth at all) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            all_ap = float(np.nanmean(ap))
            all_ap50 = float(np.nanmean(ap[:, o50]))
        ret = OrderedDict(segm={"AP": 100.0 * all_ap, "AP50": 100.0 * all_ap50})
        logger.info(ret)
        return ret
