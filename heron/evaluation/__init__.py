"""heron.evaluation: evaluators and ``inference_on_dataset`` (Detectron2's ``detectron2.evaluation``)."""

from heron.evaluation.evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from heron.evaluation.testing import flatten_results_dict, print_csv_format, verify_results

__all__ = [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "flatten_results_dict",
    "inference_context",
    "inference_on_dataset",
    "print_csv_format",
    "verify_results",
]
