"""Tests of heron/evaluation/testing.py."""

from __future__ import annotations

import logging

import pytest

from heron.config import get_cfg
from heron.evaluation.testing import flatten_results_dict, print_csv_format, verify_results


def test_flatten_nested_results():
    nested = {"bbox": {"AP": 40.0, "AP-cat": 1.0}, "segm": {"AP": 35.0}, "x": {"y": {"z": 1}}}
    assert flatten_results_dict(nested) == {
        "bbox/AP": 40.0,
        "bbox/AP-cat": 1.0,
        "segm/AP": 35.0,
        "x/y/z": 1,
    }


def test_print_csv_format_skips_per_category_metrics(caplog):
    with caplog.at_level(logging.INFO, logger="heron.evaluation.testing"):
        print_csv_format({"bbox": {"AP": 40.0, "AP50": 61.25, "AP-person": 50.0}, "n": 3})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "copypaste: Task: bbox",
        "copypaste: AP,AP50",
        "copypaste: 40.0000,61.2500",
        "copypaste: n=3",
    ]


def _cfg(expected):
    cfg = get_cfg()
    cfg.TEST.EXPECTED_RESULTS = expected
    return cfg


def test_verify_results_passes_within_tolerance_and_exits_otherwise():
    results = {"bbox": {"AP": 40.0}}
    assert verify_results(_cfg([]), results)
    assert verify_results(_cfg([["bbox", "AP", 40.4, 0.5]]), results)
    with pytest.raises(SystemExit) as exc:
        verify_results(_cfg([["bbox", "AP", 41.0, 0.5]]), results)
    assert exc.value.code == 1
    with pytest.raises(SystemExit):
        verify_results(_cfg([["segm", "AP", 1.0, 0.5]]), results)  # missing task
    with pytest.raises(SystemExit):
        verify_results(_cfg([["bbox", "AP", 1.0, 0.5]]), {"bbox": {"AP": float("nan")}})
    with pytest.raises(ValueError, match=r"\[task, metric, expected, tolerance\]"):
        verify_results(_cfg([["bbox", "AP", 1.0]]), results)
