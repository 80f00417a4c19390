"""LVIS evaluation of boxes, masks and box proposals (Detectron2's
``detectron2/evaluation/lvis_evaluation.py``), computed by Heron's own `evaluate_lvis`."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from heron.data.catalog import MetadataCatalog
from heron.evaluation.coco_evaluation import _evaluate_box_proposals, instances_to_coco_json
from heron.evaluation.evaluator import DatasetEvaluator
from heron.evaluation.lvis_eval import evaluate_lvis
from heron.structures.boxes import BoxMode
from heron.utils import comm
from heron.utils.file_io import PathManager
from heron.utils.logger import create_small_table

__all__ = ["LVISEvaluator"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm")
_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


class _LVISAnnotations:
    """The two look-ups `_evaluate_box_proposals` makes, over an LVIS json (no crowd)."""

    def __init__(self, dataset: dict) -> None:
        # LVIS has no crowd annotations: every box counts
        self._anns = [{**ann, "iscrowd": 0} for ann in dataset.get("annotations", [])]
        self._by_image: dict[Any, list[int]] = {}
        for i, ann in enumerate(self._anns):
            self._by_image.setdefault(ann["image_id"], []).append(i)

    def getAnnIds(self, imgIds: Any) -> list[int]:
        return list(self._by_image.get(imgIds, []))

    def loadAnns(self, ids: list[int]) -> list[dict]:
        return [self._anns[i] for i in ids]


class LVISEvaluator(DatasetEvaluator):
    """Evaluates boxes, masks and box proposals with LVIS's federated metrics.

    Predictions are converted to LVIS result records (Detectron2's COCO records) in
    ``process``; ``evaluate`` gathers them from all processes and evaluates on the main
    process. Results are ``{task: {metric: value}}`` in percent with "AP", "AP50", "AP75",
    "APs", "APm", "APl", "APr", "APc", "APf" for "bbox" and "segm" (NaN where LVIS cannot
    compute a metric, e.g. APr with no rare category in the ground truth), and
    ``{"box_proposals": {"AR@100", ...}}`` for proposals.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | Any | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets_per_image: int | None = None,
    ) -> None:
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file``, an LVIS
                json (v0.5 or v1).
            tasks: subset of ("bbox", "segm"); None infers them from the predictions. A
                config (deprecated) is ignored, as in Detectron2.
            distributed: gather predictions from all processes before evaluating.
            output_dir: where to write ``instances_predictions.pth`` and
                ``lvis_instances_results.json``.
            max_dets_per_image: detections per image kept for evaluation (highest scores);
                None means LVIS's 300, a negative number keeps all.
        """
        self._logger = logging.getLogger(__name__)
        if tasks is not None and hasattr(tasks, "TEST"):  # a config node
            self._logger.warning(
                "LVIS Evaluator instantiated using config, this is deprecated behavior. "
                "Please pass in explicit arguments instead."
            )
            tasks = None
        if tasks is not None:
            tasks = tuple(tasks)
            unknown = [t for t in tasks if t not in _TASKS]
            if unknown:
                raise ValueError(f"tasks must be among {list(_TASKS)}, got {list(tasks)}")
        self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets_per_image = 300 if max_dets_per_image is None else int(max_dets_per_image)
        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        json_file = self._metadata.get("json_file")
        if json_file is None:
            raise ValueError(
                f"LVISEvaluator needs metadata 'json_file' (an LVIS json) for dataset "
                f"{dataset_name!r}; register it with register_lvis_instances"
            )
        with PathManager.open(json_file, "r") as f:
            self._lvis_gt = json.load(f)
        for key in ("images", "categories"):
            if key not in self._lvis_gt:
                raise ValueError(f"{json_file}: the top-level object is missing key {key!r}")
        self._image_ids = {img["id"] for img in self._lvis_gt["images"]}
        # Test-set jsons have no annotations; they are evaluated on LVIS's server.
        self._do_evaluation = len(self._lvis_gt.get("annotations", [])) > 0
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Record one batch.

        Args:
            inputs: model inputs; each has ``image_id``.
            outputs: model outputs; each may have ``instances`` (``pred_boxes``, ``scores``,
                ``pred_classes``, optional ``pred_masks``; see `instances_to_coco_json`)
                and ``proposals`` (Instances with ``proposal_boxes`` and
                ``objectness_logits``).
        """
        for input_per_image, output in zip(inputs, outputs):
            prediction: dict[str, Any] = {"image_id": input_per_image["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = instances_to_coco_json(
                    instances, input_per_image["image_id"]
                )
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def evaluate(self) -> dict[str, Any]:
        """Gather the predictions and compute the metrics.

        Returns:
            ``{task: {metric: value}}`` on the main process, {} on the others. With no
            predictions at all, each task's metrics are 0.0 and a warning is logged.

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
        for prediction in predictions:
            if prediction["image_id"] not in self._image_ids:
                raise ValueError(
                    f"a prediction has image_id {prediction['image_id']!r}, which is not an "
                    f"image of {self._metadata.json_file} ({len(self._image_ids)} images)"
                )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "instances_predictions.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(predictions, f)
        self._results: dict[str, Any] = OrderedDict()
        if predictions and "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if not predictions or "instances" in predictions[0]:
            self._eval_predictions(predictions)
        return copy.deepcopy(self._results)

    def _tasks_from_predictions(self, lvis_results: list[dict]) -> tuple[str, ...]:
        for result in lvis_results:
            if "segmentation" in result:
                return ("bbox", "segm")
        return ("bbox",)

    def _unmap_category_ids(self, lvis_results: list[dict]) -> None:
        """Turn contiguous class indices into LVIS category ids, in place."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:  # e.g. LVIS evaluation of a COCO-category dataset
            reverse = {v: k for k, v in id_map.items()}
        else:  # LVIS ids are 1..K
            reverse = {k - 1: k for k in (c["id"] for c in self._lvis_gt["categories"])}
        for result in lvis_results:
            category_id = result["category_id"]
            if category_id not in reverse:
                raise ValueError(
                    f"a prediction for image_id {result['image_id']!r} has class index "
                    f"{category_id!r}; expected one of 0..{len(reverse) - 1}"
                )
            result["category_id"] = reverse[category_id]

    def _eval_predictions(self, predictions: list[dict]) -> None:
        """Evaluate the instance predictions and fill ``self._results``."""
        self._logger.info("Preparing results in the LVIS format ...")
        lvis_results = [dict(r) for r in itertools.chain(*[x["instances"] for x in predictions])]
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        self._unmap_category_ids(lvis_results)
        if self._output_dir:
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info("Saving results to %s", file_path)
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(lvis_results))
                f.flush()
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        for task in sorted(tasks):
            self._results[task] = _evaluate_predictions_on_lvis(
                self._lvis_gt, lvis_results, task, max_dets_per_image=self._max_dets_per_image
            )

    def _eval_box_proposals(self, predictions: list[dict]) -> None:
        """Compute proposal recall (AR@100, AR@1000 per area) into ``self._results``."""
        if self._output_dir:
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
        annotations = _LVISAnnotations(self._lvis_gt)
        res = {}
        areas = {"all": "", "small": "s", "medium": "m", "large": "l"}
        for limit in [100, 1000]:
            for area, suffix in areas.items():
                stats = _evaluate_box_proposals(predictions, annotations, area=area, limit=limit)
                res[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
        self._logger.info("Proposal metrics: \n%s", create_small_table(res))
        self._results["box_proposals"] = res


def _evaluate_predictions_on_lvis(
    lvis_gt: dict, lvis_results: list[dict], iou_type: str, max_dets_per_image: int = 300
) -> dict[str, float]:
    """Evaluate LVIS result records for one task; metrics in percent.

    Args:
        lvis_gt: the LVIS json (a dict).
        lvis_results: records with dataset category ids.
        iou_type: "bbox" or "segm".
        max_dets_per_image: detections kept per image; negative keeps all.

    Returns:
        The 9 LVIS metrics in percent; NaN where undefined (Detectron2 reports -100 there,
        LVIS's -1 times 100). All 0.0, with a warning, when there are no results.
    """
    if len(lvis_results) == 0:
        logger.warning(
            "No predictions from the model for task %r: metrics reported as 0.", iou_type
        )
        return {metric: 0.0 for metric in _METRICS}
    if iou_type == "segm" and not all("segmentation" in r for r in lvis_results):
        raise ValueError("task 'segm' needs pred_masks in every prediction's instances")
    logger.info("Evaluating with max detections per image = %d", max_dets_per_image)
    evaluation = evaluate_lvis(lvis_gt, lvis_results, iou_type, max_dets=max_dets_per_image)
    results = {
        metric: float(evaluation.metrics[metric] * 100)
        if evaluation.metrics[metric] >= 0
        else math.nan
        for metric in _METRICS
    }
    logger.info("Evaluation results for %s: \n%s", iou_type, create_small_table(results))
    return results
