"""Helpers around evaluation results: the copy-paste log format, checks against expected
values (TEST.EXPECTED_RESULTS) and flattening nested results into "task/metric" keys."""

from __future__ import annotations

import logging
import pprint
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["flatten_results_dict", "print_csv_format", "verify_results"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping[str, Any]) -> None:
    """Log each task's metrics as two comma-separated lines (names, then values), which
    paste straight into a spreadsheet. Per-category metrics (names with "-") are left out.

    Args:
        results: ``{task: {metric: value}}``; a non-dict value is logged as ``task=value``.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping, got {type(results).__name__}")
    for task, res in results.items():
        if isinstance(res, Mapping):
            important = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info("copypaste: Task: %s", task)
            logger.info("copypaste: %s", ",".join(k for k, _ in important))
            logger.info("copypaste: %s", ",".join(f"{float(v):.4f}" for _, v in important))
        else:
            logger.info("copypaste: %s=%s", task, res)


def verify_results(cfg: Any, results: Mapping[str, Any]) -> bool:
    """Check ``results`` against ``cfg.TEST.EXPECTED_RESULTS``.

    Each entry is ``[task, metric, expected, tolerance]``. Like Detectron2, a failed check
    logs both sides and exits the process with status 1 (end-to-end test scripts rely on
    the exit status); it returns True when everything matches or nothing is expected.
    """
    expected_results = cfg.TEST.EXPECTED_RESULTS
    if not len(expected_results):
        return True
    ok = True
    for entry in expected_results:
        if len(entry) != 4:
            raise ValueError(
                "each TEST.EXPECTED_RESULTS entry must be [task, metric, expected, tolerance], "
                f"got {entry!r}"
            )
        task, metric, expected, tolerance = entry
        actual = results.get(task, {}).get(metric)
        if actual is None or not np.isfinite(actual):
            logger.error("Result %s/%s is missing or not finite: %r", task, metric, actual)
            ok = False
            continue
        if abs(actual - expected) > tolerance:
            logger.error(
                "Result %s/%s = %s differs from the expected %s by more than %s",
                task,
                metric,
                actual,
                expected,
                tolerance,
            )
            ok = False
    if not ok:
        logger.error("Result verification failed!")
        logger.error("Expected Results: %s", expected_results)
        logger.error("Actual Results: %s", pprint.pformat(results))
        sys.exit(1)
    logger.info("Results verification passed.")
    return True


def flatten_results_dict(results: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten nested dicts into one level with "/"-joined keys.

    ``{"bbox": {"AP": 40.0}, "segm": {"AP": 35.0}}`` becomes
    ``{"bbox/AP": 40.0, "segm/AP": 35.0}``.
    """
    out: dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                out[f"{key}/{sub_key}"] = sub_value
        else:
            out[key] = value
    return out
