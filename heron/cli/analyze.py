"""`heron analyze`: FLOPs, activations, parameters and structure of a config's model
(Detectron2's tools/analyze_model.py).

The counted inputs are the first --num-inputs images of the test loader of
DATASETS.TEST[0], or, with --image-size (or when the config has no test dataset), random
images of that size. FLOPs follow torch.utils.flop_counter (a multiply-add is 2 FLOPs); the
tables also give GMACs, the unit Detectron2 (fvcore) calls "flops".
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
from collections.abc import Iterator, Mapping
from typing import Any

from heron.cli.common import add_model_arguments, load_config

__all__ = ["add_parser", "analyze_main", "format_module_table", "format_operator_table"]

logger = logging.getLogger("heron.cli.analyze")

_TASKS = ("flop", "activation", "parameter", "structure")


def _image_size(text: str) -> tuple[int, int]:
    """Parse "HxW" (e.g. "800x1333") into (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--image-size must be HxW, e.g. 800x1333, got {text!r}")
    return int(parts[0]), int(parts[1])


def add_parser(subparsers: Any) -> None:
    """Register the `analyze` verb."""
    parser = subparsers.add_parser(
        "analyze",
        help="count a model's FLOPs, activations and parameters, or print its structure",
        description="Builds the model of --config-file (with --weights if given) and reports "
        "the chosen --tasks. FLOPs and activations are averaged over --num-inputs images, "
        "each run alone in eval mode.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=_TASKS,
        default=["flop"],
        help="what to report (default: flop); put -- between the tasks and KEY VALUE overrides",
    )
    parser.add_argument(
        "-n", "--num-inputs", type=int, default=1, help="images to average over (default: 1)"
    )
    parser.add_argument(
        "--max-depth", type=int, default=3, help="module nesting shown in the tables (default: 3)"
    )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        metavar="HxW",
        help="use random images of this size instead of the test dataset",
    )
    parser.set_defaults(handler=analyze_main)


def _loader_inputs(cfg: Any) -> Iterator[list[dict]]:
    from heron.data.build import build_detection_test_loader

    yield from build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])


def _random_inputs(size: tuple[int, int]) -> Iterator[list[dict]]:
    import torch

    # a private generator: the same images every run, without touching the global seed
    g = torch.Generator().manual_seed(0)
    while True:
        image = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
        yield [{"image": image, "height": size[0], "width": size[1]}]


def _inputs(cfg: Any, args: argparse.Namespace) -> list[dict]:
    """The first --num-inputs model inputs (one dict each)."""
    if args.image_size is None and not cfg.DATASETS.TEST:
        raise ValueError("the config has no DATASETS.TEST: give --image-size HxW")
    source = _loader_inputs(cfg) if args.image_size is None else _random_inputs(args.image_size)
    inputs = [batch[0] for batch in itertools.islice(source, args.num_inputs)]
    if len(inputs) < args.num_inputs:
        logger.warning("The test set has only %d images; analyzing those", len(inputs))
    return inputs


def format_module_table(
    by_module: Mapping[str, float], max_depth: int, columns: Mapping[str, float]
) -> str:
    """One row per module down to `max_depth` levels ("" shown as "model") and one column
    per entry of `columns` (header -> divisor applied to the counts)."""
    from tabulate import tabulate

    rows = [
        [name or "model"] + [f"{v / d:.6g}" for d in columns.values()]
        for name, v in by_module.items()
        if name == "" or name.count(".") < max_depth
    ]
    align = ("left",) + ("right",) * len(columns)
    return tabulate(
        rows, headers=["module", *columns], tablefmt="pipe", disable_numparse=True, colalign=align
    )


def format_operator_table(by_operator: Mapping[str, float], columns: Mapping[str, float]) -> str:
    """One row per operator, largest first, plus a "total" row."""
    from tabulate import tabulate

    items = sorted(by_operator.items(), key=lambda kv: -kv[1])
    items.append(("total", sum(by_operator.values())))
    rows = [[op] + [f"{v / d:.6g}" for d in columns.values()] for op, v in items]
    align = ("left",) + ("right",) * len(columns)
    return tabulate(
        rows, headers=["operator", *columns], tablefmt="pipe", disable_numparse=True, colalign=align
    )


def _analyze_counts(model: Any, inputs: list[dict], args: argparse.Namespace, kind: str) -> None:
    """Print the per-module and per-operator tables of FLOPs or activations."""
    from tqdm import tqdm

    from heron.utils.analysis import ActivationCountAnalysis, FlopCountAnalysis

    cls = FlopCountAnalysis if kind == "flop" else ActivationCountAnalysis
    columns = {"GFLOPs": 1e9, "GMACs": 2e9} if kind == "flop" else {"M activations": 1e6}
    # one analysis per input, so the spread over inputs can be reported too
    per_input = [
        cls(model, [d]) for d in tqdm(inputs, desc=kind, disable=None if len(inputs) > 1 else True)
    ]
    n = len(per_input)
    module_counts = [a.by_module() for a in per_input]
    by_module = {m: sum(c[m] for c in module_counts) / n for m in module_counts[0]}
    by_operator: dict[str, float] = {}
    for a in per_input:
        for op, v in a.by_operator().items():
            by_operator[op] = by_operator.get(op, 0.0) + v / n
    totals = [a.total() for a in per_input]
    title = "FLOPs" if kind == "flop" else "Activations"
    print(f"{title} per module, averaged over {n} input(s):")
    print(format_module_table(by_module, args.max_depth, columns))
    print(f"\n{title} per operator, averaged over {n} input(s):")
    print(format_operator_table(by_operator, columns))
    unit, scale = ("GFLOPs", 1e9) if kind == "flop" else ("M activations", 1e6)
    spread = statistics.pstdev(totals) / scale if n > 1 else 0.0
    print(f"\nTotal {unit}: {statistics.fmean(totals) / scale:.6g} ± {spread:.3g}\n")


def analyze_main(args: argparse.Namespace) -> int:
    """Run `heron analyze`; returns the exit code."""
    from heron.checkpoint import DetectionCheckpointer
    from heron.modeling import build_model
    from heron.utils.analysis import parameter_count_table
    from heron.utils.logger import setup_logger

    setup_logger(name="heron")
    if args.num_inputs < 1:
        raise ValueError(f"--num-inputs must be >= 1, got {args.num_inputs}")
    cfg = load_config(args)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    needs_inputs = any(t in ("flop", "activation") for t in args.tasks)
    inputs = _inputs(cfg, args) if needs_inputs else []
    for task in dict.fromkeys(args.tasks):  # each task once, in the order given
        if task in ("flop", "activation"):
            _analyze_counts(model, inputs, args, task)
        elif task == "parameter":
            print("Parameters per module:")
            print(parameter_count_table(model, max_depth=args.max_depth) + "\n")
        else:
            print("Model structure:")
            print(str(model) + "\n")
    return 0
