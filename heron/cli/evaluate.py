"""`heron eval`: evaluate a trained model on its config's test datasets (or others).

The YAML counterpart of ``heron train --eval-only`` with a simpler interface: the weights
are an argument, the datasets can be chosen on the command line, and the metrics end in one
summary table (and optionally a JSON file).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from heron.cli.common import add_model_arguments, load_config

__all__ = ["add_parser", "evaluate_main", "format_results_table"]

logger = logging.getLogger("heron.cli.evaluate")


def add_parser(subparsers: Any) -> None:
    """Register the `eval` verb."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on datasets (COCO AP, PQ, mIoU, ... by dataset type)",
        description="Builds the model of --config-file, loads --weights and evaluates it on "
        "DATASETS.TEST (or --datasets) with the evaluator the dataset's metadata names "
        "(evaluator_type). Prints one table of the main metrics per dataset and task.",
    )
    add_model_arguments(parser, weights_required=True)
    parser.add_argument(
        "--datasets", nargs="+", metavar="NAME", help="registered datasets (default: DATASETS.TEST)"
    )
    parser.add_argument(
        "--output", metavar="DIR", help="results folder (default: OUTPUT_DIR/inference)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    parser.set_defaults(handler=evaluate_main)


def format_results_table(results: Mapping[str, Any]) -> str:
    """One row per (dataset, task) and a column per summary metric (per-class ones, whose
    names hold "-", are left out), as a plain-text table."""
    from tabulate import tabulate

    rows: list[list[Any]] = []
    columns: list[str] = []
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            if not isinstance(metrics, Mapping):
                continue
            names = [k for k in metrics if "-" not in k]
            columns.extend(k for k in names if k not in columns)
            rows.append([dataset, task, {k: metrics[k] for k in names}])
    table = [[d, t] + [f"{m[c]:.2f}" if c in m else "" for c in columns] for d, t, m in rows]
    return tabulate(table, headers=["dataset", "task", *columns], tablefmt="github")


def evaluate_main(args: argparse.Namespace) -> int:
    """Run `heron eval`; returns the exit code (0, or 2 when a dataset has no evaluator)."""
    from heron.checkpoint import DetectionCheckpointer
    from heron.data.catalog import DatasetCatalog
    from heron.engine.defaults import DefaultTrainer
    from heron.evaluation import build_evaluator
    from heron.utils.logger import setup_logger

    setup_logger(name="heron")
    cfg = load_config(args, freeze=False)
    if args.datasets:
        cfg.DATASETS.TEST = tuple(args.datasets)
    cfg.freeze()
    if not cfg.DATASETS.TEST:
        print("heron eval: no dataset to evaluate: give --datasets or set DATASETS.TEST")
        return 2
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluators = []
    for name in cfg.DATASETS.TEST:
        DatasetCatalog.get(name)  # an unknown name fails here; generated datasets appear
        try:
            evaluators.append(build_evaluator(cfg, name, os.path.join(output, name)))
        except NotImplementedError:
            print(
                f"heron eval: dataset {name!r} has no evaluator: its metadata's evaluator_type "
                "is missing or unknown (see heron.evaluation.build_evaluator)"
            )
            return 2
    model = DefaultTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    results = DefaultTrainer.test(cfg, model, evaluators)
    if len(cfg.DATASETS.TEST) == 1:
        results = {cfg.DATASETS.TEST[0]: results}
    print(format_results_table(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
