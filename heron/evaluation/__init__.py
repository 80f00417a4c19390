"""heron.evaluation: evaluators and ``inference_on_dataset`` (Detectron2's ``detectron2.evaluation``),
plus Heron's detection report."""

from heron.evaluation.build import build_evaluator
from heron.evaluation.cityscapes_evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
)
from heron.evaluation.coco_evaluation import COCOEvaluator, instances_to_coco_json
from heron.evaluation.detection_report import DetectionReportEvaluator
from heron.evaluation.evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from heron.evaluation.lvis_evaluation import LVISEvaluator
from heron.evaluation.panoptic_evaluation import COCOPanopticEvaluator
from heron.evaluation.panoptic_quality import pq_compute
from heron.evaluation.pascal_voc_evaluation import PascalVOCDetectionEvaluator
from heron.evaluation.rotated_coco_evaluation import RotatedCOCOEvaluator
from heron.evaluation.sem_seg_evaluation import SemSegEvaluator
from heron.evaluation.testing import flatten_results_dict, print_csv_format, verify_results

__all__ = [
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "DetectionReportEvaluator",
    "LVISEvaluator",
    "PascalVOCDetectionEvaluator",
    "RotatedCOCOEvaluator",
    "SemSegEvaluator",
    "build_evaluator",
    "flatten_results_dict",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco_json",
    "pq_compute",
    "print_csv_format",
    "verify_results",
]
