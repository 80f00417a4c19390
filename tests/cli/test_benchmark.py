"""Tests of `heron benchmark` (heron/cli/benchmark.py) on the tiny Mask R-CNN of conftest.py."""

from __future__ import annotations

import argparse
import re

import pytest

from heron.cli import benchmark

# training at the tiny test size, two images a batch; few detections keep inference fast
SMALL = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
]
SMALL += ["TEST.DETECTIONS_PER_IMAGE", "5"]


def run_benchmark(argv: list[str]) -> int:
    """Parse `argv` with only the benchmark verb registered and run it."""
    parser = argparse.ArgumentParser(prog="heron")
    benchmark.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", *argv])
    return args.handler(args)


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        run_benchmark(["--help"])
    assert e.value.code == 0
    assert "--warmup" in capsys.readouterr().out


def test_all_tasks_report_positive_throughput(tiny_model, capsys):
    config, weights = tiny_model
    argv = ["--config-file", config, "--weights", weights, "--task", "all"]
    assert run_benchmark([*argv, "--iters", "2", "--warmup", "1", *SMALL]) == 0
    out = capsys.readouterr().out
    summary = out.split("Benchmark summary")[1]
    for task in ("data", "train", "eval"):
        row = re.search(rf"\| {task} +\| +2 \| +([0-9.]+) \| +([0-9.]+) \| +([0-9]+) \|", summary)
        assert row, summary
        seconds_per_iter, images_per_second = float(row.group(1)), float(row.group(2))
        assert seconds_per_iter > 0 and images_per_second > 0
        assert int(row.group(3)) > 0  # peak memory (process RSS) is known on the CPU


def test_result_rates_are_computed_from_totals():
    r = benchmark.BenchmarkResult("train", iters=4, seconds=2.0, images=8)
    assert r.seconds_per_iter == 0.5  # 2 s / 4 iterations
    assert r.images_per_second == 4.0  # 8 images / 2 s
    table = benchmark.format_summary([r])
    cells = [c.strip() for c in table.splitlines()[-1].strip("|").split("|")]
    assert cells == ["train", "4", "0.5000", "4.00", ""]  # peak memory unknown


def test_zero_iterations_is_an_error(tiny_model):
    config, _ = tiny_model
    with pytest.raises(ValueError, match="--iters must be >= 1, got 0"):
        run_benchmark(["--config-file", config, "--task", "data", "--iters", "0"])


def test_eval_without_test_dataset_is_an_error(tiny_model):
    config, _ = tiny_model
    with pytest.raises(ValueError, match=r"DATASETS\.TEST is empty"):
        run_benchmark(["--config-file", config, "--task", "eval", "DATASETS.TEST", "()"])
