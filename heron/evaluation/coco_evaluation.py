"""COCO-style evaluation of boxes, masks, keypoints and box proposals (Detectron2's
``detectron2/evaluation/coco_evaluation.py``)."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from heron.data.catalog import MetadataCatalog
from heron.data.datasets.coco import convert_to_coco_json
from heron.evaluation.evaluator import DatasetEvaluator
from heron.evaluation.fast_eval import COCOeval_opt, fast_coco_from_dataset
from heron.structures.boxes import Boxes, BoxMode, pairwise_iou
from heron.structures.instances import Instances
from heron.utils import comm
from heron.utils.file_io import PathManager
from heron.utils.logger import create_small_table

__all__ = ["COCOEvaluator", "COCOevalMaxDets", "instances_to_coco_json"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm", "keypoints")
_METRICS = {
    "bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "segm": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "keypoints": ["AP", "AP50", "AP75", "APm", "APl"],
}


class COCOevalMaxDets(COCOeval):
    """pycocotools' COCOeval whose summary reads AP at the last ``maxDets`` entry.

    pycocotools computes the first statistic (AP at IoU 0.50:0.95) at 100 detections
    whatever ``params.maxDets`` says, so it is -1 when 100 is not in the list. Detectron2
    uses this subclass when ``max_dets_per_image`` is not 100; the other statistics are
    pycocotools' own.
    """

    def summarize(self) -> None:
        if not self.eval:
            raise RuntimeError("COCOevalMaxDets.summarize: call evaluate() and accumulate() first")
        if self.params.iouType not in ("bbox", "segm"):
            super().summarize()
            return
        with contextlib.redirect_stdout(io.StringIO()):
            super().summarize()
        self.stats[0] = _mean_valid(self._select_precision(self.params.maxDets[-1]))
        logger.info("COCOevalMaxDets stats: %s", np.round(self.stats, 4).tolist())

    def _select_precision(self, max_dets: int) -> np.ndarray:
        mind = self.params.maxDets.index(max_dets)
        return self.eval["precision"][:, :, :, 0, mind]  # all IoUs, recalls, classes; area all


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _check_boxes(boxes: np.ndarray, img_id: Any) -> None:
    """Raise ValueError if any (x, y, w, h[, angle]) row is not finite or has w or h < 0."""
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if bad.any():
        k = int(np.nonzero(bad)[0][0])
        raise ValueError(
            f"prediction #{k} of image_id {img_id!r} has a malformed box {boxes[k].tolist()} "
            "(expected finite numbers with width and height >= 0)"
        )


def instances_to_coco_json(instances: Instances, img_id: Any) -> list[dict]:
    """Convert one image's predicted ``Instances`` to COCO result records.

    Args:
        instances: with ``pred_boxes`` (Boxes, (N, 4) XYXY_ABS), ``scores`` (N,),
            ``pred_classes`` (N,) contiguous ids, and optionally ``pred_masks``
            ((N, H, W) bool or 0/1) and ``pred_keypoints`` ((N, K, 3): x, y, score).
        img_id: the image's id in the dataset.

    Returns:
        One dict per instance with ``image_id``, ``category_id`` (still contiguous),
        ``bbox`` (XYWH_ABS), ``score``, and ``segmentation`` (compressed RLE, ``counts``
        as str) or ``keypoints`` (flattened K * 3 list) when present. Keypoint x and y are
        shifted by -0.5, undoing the +0.5 ``load_coco_json`` adds to COCO's integer pixel
        indices (as Detectron2).

    Raises:
        ValueError: a box is not finite or has negative width or height.
    """
    num_instance = len(instances)
    if num_instance == 0:
        return []
    boxes = instances.pred_boxes.tensor.detach().cpu().double().numpy()
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    _check_boxes(boxes, img_id)
    boxes = boxes.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()

    rles = None
    if instances.has("pred_masks"):
        masks = instances.pred_masks.detach().cpu().numpy().astype(np.uint8)  # (N, H, W)
        # pycocotools wants (H, W, N) in Fortran order; counts bytes -> str for json
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("utf-8")

    keypoints = None
    if instances.has("pred_keypoints"):
        keypoints = instances.pred_keypoints.detach().cpu().clone().double()
        keypoints[:, :, :2] -= 0.5  # continuous coordinates -> COCO pixel indices
        keypoints = keypoints.flatten(1).tolist()

    results = []
    for k in range(num_instance):
        result = {
            "image_id": img_id,
            "category_id": classes[k],
            "bbox": boxes[k],
            "score": scores[k],
        }
        if rles is not None:
            result["segmentation"] = rles[k]
        if keypoints is not None:
            result["keypoints"] = keypoints[k]
        results.append(result)
    return results


class COCOEvaluator(DatasetEvaluator):
    """Evaluates box proposals, boxes, masks and keypoints with COCO's metrics.

    Predictions are converted to COCO result records in ``process``; ``evaluate`` gathers
    them from all processes and runs COCOeval on the main process. Results are
    ``{task: {metric: value}}`` with values in percent ("AP", "AP50", "AP75", "APs",
    "APm", "APl" and "AP-<class name>"; keypoints have no "APs"), NaN where COCO cannot
    compute a metric, and ``{"box_proposals": {"AR@100", ...}}`` for proposals.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | Any | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets_per_image: int | None = None,
        use_fast_impl: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
    ) -> None:
        """
        Args:
            dataset_name: a registered dataset. Its metadata's ``json_file`` is the COCO
                ground truth; without one, the dataset is converted to
                ``<output_dir>/<dataset_name>_coco_format.json`` (reused when it exists
                and ``allow_cached_coco``).
            tasks: subset of ("bbox", "segm", "keypoints"); None infers them from the
                predictions. A config (deprecated) is read for TEST.KEYPOINT_OKS_SIGMAS only.
            distributed: gather predictions from all processes before evaluating.
            output_dir: where to write ``instances_predictions.pth`` and
                ``coco_instances_results.json``.
            max_dets_per_image: detections per image for the last maxDets entry; COCO's
                list is [1, 10, 100] and becomes [1, 10, max_dets_per_image].
            use_fast_impl: evaluate with faster-coco-eval instead of pycocotools (same numbers).
            kpt_oks_sigmas: per-keypoint OKS sigmas; empty keeps COCO's 17 person sigmas.
            allow_cached_coco: reuse a previously converted json.
        """
        self._logger = logging.getLogger(__name__)
        self._distributed = distributed
        self._output_dir = output_dir
        self._use_fast_impl = use_fast_impl
        if max_dets_per_image is None:
            self._max_dets_per_image = [1, 10, 100]
        else:
            if int(max_dets_per_image) < 10:
                raise ValueError(f"max_dets_per_image must be >= 10, got {max_dets_per_image}")
            self._max_dets_per_image = [1, 10, int(max_dets_per_image)]
        if tasks is not None and hasattr(tasks, "TEST"):  # a config node
            kpt_oks_sigmas = tasks.TEST.KEYPOINT_OKS_SIGMAS
            self._logger.warning(
                "COCO Evaluator instantiated using config, this is deprecated behavior. "
                "Please pass in explicit arguments instead."
            )
            tasks = None
        if tasks is not None:
            tasks = tuple(tasks)
            unknown = [t for t in tasks if t not in _TASKS]
            if unknown:
                raise ValueError(f"tasks must be among {list(_TASKS)}, got {list(tasks)}")
        self._tasks = tasks
        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        if self._metadata.get("json_file") is None:
            if output_dir is None:
                raise ValueError(
                    f"output_dir must be provided to COCOEvaluator for dataset {dataset_name!r}, "
                    "which has no json_file in its metadata (it is converted to COCO format)"
                )
            self._logger.info("Trying to convert '%s' to COCO format ...", dataset_name)
            cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            self._metadata.json_file = cache_path
            convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached_coco)
        json_file = PathManager.get_local_path(self._metadata.json_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_api = COCO(json_file)
        self._fast_coco_api = None  # built on first use
        # Test-set jsons have no annotations; they are evaluated on COCO's server.
        self._do_evaluation = "annotations" in self._coco_api.dataset
        self._kpt_oks_sigmas = tuple(kpt_oks_sigmas)
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Record one batch.

        Args:
            inputs: model inputs; each has ``image_id``.
            outputs: model outputs; each may have ``instances`` (see
                `instances_to_coco_json`) and ``proposals`` (Instances with
                ``proposal_boxes`` and ``objectness_logits``).
        """
        for input_per_image, output in zip(inputs, outputs):
            prediction: dict[str, Any] = {"image_id": input_per_image["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = self._instances_to_json(
                    instances, input_per_image["image_id"]
                )
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def _instances_to_json(self, instances: Instances, img_id: Any) -> list[dict]:
        return instances_to_coco_json(instances, img_id)

    def evaluate(self, img_ids: Sequence[Any] | None = None) -> dict[str, Any]:
        """Gather the predictions and compute the metrics.

        Args:
            img_ids: evaluate only these image ids (default: all images of the dataset).

        Returns:
            ``{task: {metric: value}}`` on the main process, {} on the others. With no
            predictions at all, each task's summary metrics are 0.0 and a warning is logged.

        Raises:
            ValueError: a prediction names an image or a category the dataset lacks.
        """
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
        self._check_image_ids(predictions)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "instances_predictions.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(predictions, f)
        self._results: dict[str, Any] = OrderedDict()
        if predictions and "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if not predictions or "instances" in predictions[0]:
            self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _check_image_ids(self, predictions: list[dict]) -> None:
        known = self._coco_api.imgs
        for prediction in predictions:
            if prediction["image_id"] not in known:
                raise ValueError(
                    f"a prediction has image_id {prediction['image_id']!r}, which is not an "
                    f"image of {self._metadata.json_file} ({len(known)} images)"
                )

    def _tasks_from_predictions(self, predictions: list[dict]) -> list[str]:
        """Return "bbox", plus "segm" and "keypoints" if any record has them."""
        tasks = {"bbox"}
        for pred in predictions:
            if "segmentation" in pred:
                tasks.add("segm")
            if "keypoints" in pred:
                tasks.add("keypoints")
        return sorted(tasks)

    def _unmap_category_ids(self, coco_results: list[dict]) -> None:
        """Turn contiguous category ids back into the dataset's ids, in place."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:
            reverse = {v: k for k, v in id_map.items()}
        else:
            reverse = {k: k for k in self._coco_api.cats}
        for result in coco_results:
            category_id = result["category_id"]
            if category_id not in reverse:
                raise ValueError(
                    f"a prediction for image_id {result['image_id']!r} has category id "
                    f"{category_id!r}; expected one of {sorted(reverse)} (contiguous ids "
                    "when the metadata has thing_dataset_id_to_contiguous_id)"
                )
            result["category_id"] = reverse[category_id]

    def _eval_predictions(self, predictions: list[dict], img_ids: Sequence[Any] | None) -> None:
        """Evaluate the instance predictions and fill ``self._results``."""
        self._logger.info("Preparing results for COCO format ...")
        coco_results = [dict(r) for r in itertools.chain(*[x["instances"] for x in predictions])]
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._unmap_category_ids(coco_results)
        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info("Saving results to %s", file_path)
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
                f.flush()
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info(
            "Evaluating predictions with %s COCO API...",
            "unofficial (faster-coco-eval)" if self._use_fast_impl else "official",
        )
        for task in sorted(tasks):
            if not coco_results:  # COCO's API cannot load an empty result list
                self._results[task] = self._empty_results(task, img_ids)
                continue
            coco_eval = self._evaluate_task(coco_results, task, img_ids)
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )

    def _evaluate_task(
        self, coco_results: list[dict], task: str, img_ids: Sequence[Any] | None
    ) -> Any:
        coco_gt = self._coco_api
        if self._use_fast_impl:
            if self._fast_coco_api is None:
                self._fast_coco_api = fast_coco_from_dataset(self._coco_api.dataset)
            coco_gt = self._fast_coco_api
        return _evaluate_predictions_on_coco(
            coco_gt,
            coco_results,
            task,
            kpt_oks_sigmas=self._kpt_oks_sigmas,
            use_fast_impl=self._use_fast_impl,
            img_ids=img_ids,
            max_dets_per_image=self._max_dets_per_image,
        )

    def _empty_results(self, task: str, img_ids: Sequence[Any] | None) -> dict[str, float]:
        """Metrics of an empty prediction set: 0.0 for the summary metrics; per class, 0.0
        where the class has ground truth COCO counts, NaN where it has none."""
        self._logger.warning(
            "No predictions from the model for task %r: its metrics are reported as 0.", task
        )
        results = {metric: 0.0 for metric in _METRICS[task]}
        class_names = self._metadata.get("thing_classes")
        if class_names is None or len(class_names) <= 1:
            return results
        wanted = set(self._coco_api.imgs if img_ids is None else img_ids)
        counted = set()
        for ann in self._coco_api.dataset.get("annotations", []):
            if ann["image_id"] not in wanted or ann.get("iscrowd", 0) or ann.get("ignore", 0):
                continue
            if task == "keypoints" and ann.get("num_keypoints", 0) == 0:
                continue
            counted.add(ann["category_id"])
        for name, cat_id in zip(class_names, self._class_dataset_ids(len(class_names))):
            results["AP-" + name] = 0.0 if cat_id in counted else float("nan")
        return results

    def _class_dataset_ids(self, num_classes: int) -> list[Any]:
        """Dataset category id of each contiguous class index."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:
            return sorted(self._coco_api.cats)[:num_classes]
        reverse = {v: k for k, v in id_map.items()}
        return [reverse.get(i) for i in range(num_classes)]

    def _eval_box_proposals(self, predictions: list[dict]) -> None:
        """Compute proposal recall (AR@100, AR@1000 per area) into ``self._results``."""
        if self._output_dir:
            # proposals are XYXY_ABS; the file follows Detectron2's precomputed-proposal format
            ids, boxes, objectness_logits = [], [], []
            for prediction in predictions:
                ids.append(prediction["image_id"])
                boxes.append(prediction["proposals"].proposal_boxes.tensor.numpy())
                objectness_logits.append(prediction["proposals"].objectness_logits.numpy())
            proposal_data = {
                "boxes": boxes,
                "objectness_logits": objectness_logits,
                "ids": ids,
                "bbox_mode": BoxMode.XYXY_ABS.value,
            }
            with PathManager.open(os.path.join(self._output_dir, "box_proposals.pkl"), "wb") as f:
                pickle.dump(proposal_data, f)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info("Evaluating bbox proposals ...")
        res = {}
        areas = {"all": "", "small": "s", "medium": "m", "large": "l"}
        for limit in [100, 1000]:
            for area, suffix in areas.items():
                stats = _evaluate_box_proposals(predictions, self._coco_api, area=area, limit=limit)
                res[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
        self._logger.info("Proposal metrics: \n%s", create_small_table(res))
        self._results["box_proposals"] = res

    def _derive_coco_results(
        self, coco_eval: Any, iou_type: str, class_names: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Read the summary metrics (and per-class AP) off an accumulated COCOeval, in percent.

        Args:
            coco_eval: an evaluated, accumulated and summarized COCOeval, or None when
                there were no predictions.
            iou_type: "bbox", "segm" or "keypoints".
            class_names: names of the contiguous classes; with more than one, "AP-<name>"
                entries are added and a per-class table is logged.
        """
        metrics = _METRICS[iou_type]
        if coco_eval is None:
            self._logger.warning("No predictions from the model!")
            return {metric: float("nan") for metric in metrics}
        results = {
            metric: float(coco_eval.stats[idx] * 100) if coco_eval.stats[idx] >= 0 else math.nan
            for idx, metric in enumerate(metrics)
        }
        self._logger.info("Evaluation results for %s: \n%s", iou_type, create_small_table(results))
        if not np.isfinite(sum(results.values())):
            self._logger.info("Some metrics cannot be computed and is shown as NaN.")
        if class_names is None or len(class_names) <= 1:
            return results
        # precision: (iou thresholds, recall thresholds, classes, area ranges, max dets).
        # Its class axis follows params.catIds, which the fast backend restricts to the
        # categories with annotations for keypoints, so classes are looked up by id.
        precisions = coco_eval.eval["precision"]
        cat_index = {cat_id: k for k, cat_id in enumerate(coco_eval.params.catIds)}
        results_per_category = []
        for name, cat_id in zip(class_names, self._class_dataset_ids(len(class_names))):
            ap = math.nan
            if cat_id in cat_index:
                # area range 0 is "all"; max dets -1 is the largest (100 by default)
                precision = precisions[:, :, cat_index[cat_id], 0, -1]
                precision = precision[precision > -1]
                if precision.size:
                    ap = float(np.mean(precision)) * 100
            results_per_category.append((str(name), ap))
        n_cols = min(6, len(results_per_category) * 2)
        flat = list(itertools.chain(*results_per_category))
        rows = itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)])
        table = tabulate(
            rows,
            tablefmt="pipe",
            floatfmt=".3f",
            headers=["category", "AP"] * (n_cols // 2),
            numalign="left",
        )
        self._logger.info("Per-category %s AP: \n%s", iou_type, table)
        results.update({"AP-" + name: ap for name, ap in results_per_category})
        return results


def _evaluate_predictions_on_coco(
    coco_gt: Any,
    coco_results: list[dict],
    iou_type: str,
    kpt_oks_sigmas: Sequence[float] | None = None,
    use_fast_impl: bool = True,
    img_ids: Sequence[Any] | None = None,
    max_dets_per_image: list[int] | None = None,
) -> Any:
    """Run COCOeval (evaluate, accumulate, summarize) on non-empty results; return it.

    ``coco_gt`` is a pycocotools ``COCO``, or a faster-coco-eval one with ``use_fast_impl``.
    The result records are copied, so the caller's are left alone.
    """
    if len(coco_results) == 0:
        raise ValueError("coco_results is empty; COCO's API cannot evaluate no predictions")
    needed = {"segm": "segmentation", "keypoints": "keypoints"}.get(iou_type)
    if needed is not None and any(needed not in r for r in coco_results):
        raise ValueError(
            f"task {iou_type!r} needs a {needed!r} in every prediction (Instances field "
            f"{'pred_masks' if iou_type == 'segm' else 'pred_keypoints'}); some have none"
        )
    coco_results = [dict(r) for r in coco_results]
    if iou_type == "segm":
        # With a "bbox", COCO's loadRes takes the box area as the instance area, which
        # changes the small/medium/large split; dropping it makes mask AP use mask areas.
        for c in coco_results:
            c.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_dt = coco_gt.loadRes(coco_results)
    if max_dets_per_image is None:
        max_dets_per_image = [1, 10, 100]  # COCO's default
    if use_fast_impl:
        coco_eval = COCOeval_opt(coco_gt, coco_dt, iou_type)
    elif max_dets_per_image[2] != 100:
        coco_eval = COCOevalMaxDets(coco_gt, coco_dt, iou_type)
    else:
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    if iou_type != "keypoints":
        coco_eval.params.maxDets = list(max_dets_per_image)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    if iou_type == "keypoints":
        _set_keypoint_sigmas(coco_eval, coco_gt, coco_results, kpt_oks_sigmas)
    with contextlib.redirect_stdout(io.StringIO()) as summary:
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    if summary.getvalue():
        logger.info("COCOeval (%s):\n%s", iou_type, summary.getvalue().rstrip())
    return coco_eval


def _set_keypoint_sigmas(
    coco_eval: Any, coco_gt: Any, coco_results: list[dict], kpt_oks_sigmas: Any
) -> None:
    # Use COCO's 17 person sigmas unless overridden.
    if kpt_oks_sigmas is not None and len(kpt_oks_sigmas) > 0:
        coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas)
    # COCO's API needs every detection and ground truth to have the same keypoints.
    num_keypoints_dt = len(coco_results[0]["keypoints"]) // 3
    gt_with_keypoints = [a for a in coco_gt.anns.values() if "keypoints" in a]
    # (no ground truth with keypoints: nothing to compare the predictions with)
    num_keypoints_gt = (
        len(gt_with_keypoints[0]["keypoints"]) // 3 if gt_with_keypoints else num_keypoints_dt
    )
    num_keypoints_oks = len(coco_eval.params.kpt_oks_sigmas)
    if not num_keypoints_oks == num_keypoints_dt == num_keypoints_gt:
        raise ValueError(
            f"keypoint evaluation needs the same number of keypoints in the predictions "
            f"({num_keypoints_dt}), the ground truth ({num_keypoints_gt}) and kpt_oks_sigmas "
            f"({num_keypoints_oks}); pass kpt_oks_sigmas (cfg.TEST.KEYPOINT_OKS_SIGMAS) for "
            "datasets other than COCO person keypoints"
        )


def _evaluate_box_proposals(
    dataset_predictions: list[dict],
    coco_api: COCO,
    thresholds: torch.Tensor | None = None,
    area: str = "all",
    limit: int | None = None,
) -> dict[str, Any]:
    """Proposal recall over IoU thresholds, with Detectron2's (and Detectron's) definition.

    Per image, proposals are sorted by objectness and cut to ``limit``; ground-truth boxes
    (non-crowd, area in range) are greedily matched to proposals, best-covered box first,
    each proposal and box used once. Recall at t is the fraction of boxes matched at
    IoU >= t; "ar" is its mean over t in 0.50:0.05:0.95. As in Detectron2, images without
    proposals or without ground truth are skipped entirely (their boxes are not counted).
    """
    area_ranges = {
        "all": [0**2, 1e5**2],
        "small": [0**2, 32**2],
        "medium": [32**2, 96**2],
        "large": [96**2, 1e5**2],
        "96-128": [96**2, 128**2],
        "128-256": [128**2, 256**2],
        "256-512": [256**2, 512**2],
        "512-inf": [512**2, 1e5**2],
    }
    if area not in area_ranges:
        raise ValueError(f"area must be one of {list(area_ranges)}, got {area!r}")
    area_range = area_ranges[area]
    gt_overlaps = []
    num_pos = 0
    for prediction_dict in dataset_predictions:
        predictions = prediction_dict["proposals"]
        inds = predictions.objectness_logits.sort(descending=True)[1]
        predictions = predictions[inds]
        anno = coco_api.loadAnns(coco_api.getAnnIds(imgIds=prediction_dict["image_id"]))
        anno = [obj for obj in anno if obj["iscrowd"] == 0]
        gt_boxes = [
            BoxMode.convert(obj["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for obj in anno
        ]
        gt_boxes = Boxes(torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4))
        gt_areas = torch.as_tensor([obj["area"] for obj in anno], dtype=torch.float64)
        if len(gt_boxes) == 0 or len(predictions) == 0:
            continue
        valid_gt_inds = (gt_areas >= area_range[0]) & (gt_areas <= area_range[1])
        gt_boxes = gt_boxes[valid_gt_inds]
        num_pos += len(gt_boxes)
        if len(gt_boxes) == 0:
            continue
        if limit is not None and len(predictions) > limit:
            predictions = predictions[:limit]
        overlaps = pairwise_iou(predictions.proposal_boxes, gt_boxes)  # (P, G)
        covered = torch.zeros(len(gt_boxes))
        for j in range(min(len(predictions), len(gt_boxes))):
            # the ground-truth box best covered by any proposal, and that proposal
            max_overlaps, argmax_overlaps = overlaps.max(dim=0)
            _, gt_ind = max_overlaps.max(dim=0)
            box_ind = argmax_overlaps[gt_ind]
            covered[j] = overlaps[box_ind, gt_ind]
            overlaps[box_ind, :] = -1  # each proposal and box is used once
            overlaps[:, gt_ind] = -1
        gt_overlaps.append(covered)
    if gt_overlaps:
        all_overlaps = torch.cat(gt_overlaps, dim=0)
    else:
        all_overlaps = torch.zeros(0, dtype=torch.float32)
    all_overlaps, _ = torch.sort(all_overlaps)
    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float32)
    recalls = torch.zeros_like(thresholds)
    for i, t in enumerate(thresholds):
        recalls[i] = (all_overlaps >= t).float().sum() / float(num_pos)
    return {
        "ar": recalls.mean(),
        "recalls": recalls,
        "thresholds": thresholds,
        "gt_overlaps": all_overlaps,
        "num_pos": num_pos,
    }
