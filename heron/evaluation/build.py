"""Pick the evaluator(s) of a registered dataset from its metadata's ``evaluator_type``
(the dispatch Detectron2's tools/train_net.py writes out by hand)."""

from __future__ import annotations

from typing import Any

from heron.data.catalog import MetadataCatalog
from heron.evaluation.cityscapes_evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
)
from heron.evaluation.coco_evaluation import COCOEvaluator
from heron.evaluation.evaluator import DatasetEvaluator, DatasetEvaluators
from heron.evaluation.lvis_evaluation import LVISEvaluator
from heron.evaluation.panoptic_evaluation import COCOPanopticEvaluator
from heron.evaluation.pascal_voc_evaluation import PascalVOCDetectionEvaluator
from heron.evaluation.rotated_coco_evaluation import RotatedCOCOEvaluator
from heron.evaluation.sem_seg_evaluation import SemSegEvaluator

__all__ = ["EVALUATOR_TYPES", "build_evaluator"]

EVALUATOR_TYPES = (
    "coco",
    "coco_panoptic_seg",
    "sem_seg",
    "lvis",
    "pascal_voc",
    "rotated_coco",
    "cityscapes_instance",
    "cityscapes_sem_seg",
)


def build_evaluator(
    cfg: Any, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """The evaluator(s) for ``dataset_name`` by its ``evaluator_type``.

    "coco" -> COCOEvaluator; "sem_seg" -> SemSegEvaluator; "coco_panoptic_seg" -> the
    semantic, COCO instance and panoptic evaluators together; "lvis", "pascal_voc",
    "cityscapes_instance", "cityscapes_sem_seg", "rotated_coco" -> their evaluators.

    Raises:
        NotImplementedError: the dataset has no (known) ``evaluator_type``;
            ``DefaultTrainer.test`` reports such a dataset as having no evaluator.
    """
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    sigmas = tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS) if cfg is not None else ()
    evaluators: list[DatasetEvaluator] = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(
            COCOEvaluator(dataset_name, output_dir=output_folder, kpt_oks_sigmas=sigmas)
        )
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "rotated_coco":
        return RotatedCOCOEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type "
            f"{evaluator_type!r}; known types: {', '.join(EVALUATOR_TYPES)}"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
