"""`heron benchmark`: speed of the training data loader, of a training step and of
inference for a config (Detectron2's tools/benchmark.py).

Each task runs --warmup untimed iterations, then times --iters iterations, waiting for the
device to finish its queued work before reading the clock. The training step and
inference are timed on batches read into memory beforehand, so that data loading is not
part of their time. A summary table ends the run.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from heron.cli.common import add_model_arguments, load_config

__all__ = ["BenchmarkResult", "add_parser", "benchmark_main", "format_summary"]

logger = logging.getLogger("heron.cli.benchmark")

_TASKS = ("data", "train", "eval")


@dataclass
class BenchmarkResult:
    """Timing of one task: `iters` timed iterations that took `seconds` in all and
    handled `images` images; `peak_memory_mb` is None where unknown."""

    task: str
    iters: int
    seconds: float
    images: int
    peak_memory_mb: float | None = None

    @property
    def seconds_per_iter(self) -> float:
        return self.seconds / self.iters

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def add_parser(subparsers: Any) -> None:
    """Register the `benchmark` verb."""
    parser = subparsers.add_parser(
        "benchmark",
        help="time the data loader, a training step and inference of a config",
        description="Times --iters iterations after --warmup untimed ones of: the training "
        "data loader (data), a training step on batches held in memory (train), inference "
        "over the test set (eval), or all three.",
    )
    add_model_arguments(parser)
    parser.add_argument("--task", choices=(*_TASKS, "all"), default="all", help="what to time")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations (default: 3)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data-loading workers (default: DATALOADER.NUM_WORKERS)",
    )
    parser.set_defaults(handler=benchmark_main)


def _synchronize(device: Any) -> None:
    """Wait for the work queued on `device` so that the clock measures it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _reset_peak_memory(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: Any) -> float | None:
    """Peak tensor memory on CUDA, the process's peak RSS on the CPU, else None."""
    from heron.utils.memory import peak_memory_mb

    try:
        return peak_memory_mb(device)
    except ValueError:
        return None


def _time_iterations(
    task: str, step: Callable[[], int], args: argparse.Namespace, device: Any
) -> BenchmarkResult:
    """Run `step` (which returns the number of images it handled) --warmup times untimed,
    then --iters times timed, with a progress bar."""
    from tqdm import tqdm

    _reset_peak_memory(device)
    bar = tqdm(total=args.warmup + args.iters, desc=task, disable=None, leave=False)
    with bar:
        for _ in range(args.warmup):
            step()
            bar.update()
        _synchronize(device)
        images = 0
        start = time.perf_counter()
        for _ in range(args.iters):
            images += step()
            bar.update()
        _synchronize(device)
        seconds = time.perf_counter() - start
    return BenchmarkResult(task, args.iters, seconds, images, _peak_memory(device))


def _train_loader(cfg: Any) -> Iterable[list[dict]]:
    from heron.data.build import build_detection_train_loader

    return build_detection_train_loader(cfg)


def _build_model(cfg: Any) -> Any:
    from heron.checkpoint import DetectionCheckpointer
    from heron.engine.defaults import DefaultTrainer

    model = DefaultTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def benchmark_data(cfg: Any, args: argparse.Namespace, device: Any) -> BenchmarkResult:
    """Batches and images per second of the training data loader (DATASETS.TRAIN)."""
    batches = iter(_train_loader(cfg))
    return _time_iterations("data", lambda: len(next(batches)), args, device)


def benchmark_train(cfg: Any, args: argparse.Namespace, device: Any) -> BenchmarkResult:
    """Seconds per training step of SimpleTrainer, on batches read into memory first."""
    from heron.engine.defaults import DefaultTrainer
    from heron.engine.train_loop import SimpleTrainer
    from heron.utils.events import EventStorage

    batches = list(itertools.islice(_train_loader(cfg), args.warmup + args.iters))
    model = _build_model(cfg)
    optimizer = DefaultTrainer.build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, itertools.cycle(batches), optimizer)
    counter = itertools.count()

    def step() -> int:
        trainer.iter = next(counter)
        trainer.storage.iter = trainer.iter
        trainer.run_step()
        return len(batches[trainer.iter % len(batches)])

    # run_step writes its losses to the current EventStorage, as in TrainerBase.train
    with EventStorage(0) as trainer.storage:
        return _time_iterations("train", step, args, device)


def benchmark_eval(cfg: Any, args: argparse.Namespace, device: Any) -> BenchmarkResult:
    """Images per second of inference (eval mode, no gradients) over the test set."""
    import torch

    from heron.data.build import build_detection_test_loader

    if not cfg.DATASETS.TEST:
        raise ValueError("--task eval needs a test dataset: DATASETS.TEST is empty")
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    batches = list(itertools.islice(loader, args.warmup + args.iters))
    model = _build_model(cfg)
    model.eval()
    cycle = itertools.cycle(batches)

    def step() -> int:
        batch = next(cycle)
        with torch.no_grad():
            model(batch)
        return len(batch)

    return _time_iterations("eval", step, args, device)


def format_summary(results: list[BenchmarkResult]) -> str:
    """The summary table: task, iterations, s/iter, images/s, peak memory (MiB)."""
    from tabulate import tabulate

    rows = [
        [
            r.task,
            r.iters,
            f"{r.seconds_per_iter:.4f}",
            f"{r.images_per_second:.2f}",
            "" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}",
        ]
        for r in results
    ]
    headers = ["task", "iterations", "s/iter", "images/s", "peak memory (MiB)"]
    align = ("left", "right", "right", "right", "right")
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=align)


def benchmark_main(args: argparse.Namespace) -> int:
    """Run `heron benchmark`; returns the exit code."""
    import torch

    from heron.utils.logger import setup_logger

    setup_logger(name="heron")
    if args.iters < 1:
        raise ValueError(f"--iters must be >= 1, got {args.iters}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    cfg = load_config(args, freeze=False)
    if args.num_workers is not None:
        cfg.DATALOADER.NUM_WORKERS = args.num_workers
    cfg.freeze()
    device = torch.device(cfg.MODEL.DEVICE)
    tasks = _TASKS if args.task == "all" else (args.task,)
    runners = {"data": benchmark_data, "train": benchmark_train, "eval": benchmark_eval}
    results = []
    for task in tasks:
        result = runners[task](cfg, args, device)
        logger.info(
            "%s: %.4f s/iter, %.2f images/s",
            task,
            result.seconds_per_iter,
            result.images_per_second,
        )
        results.append(result)
    print("Benchmark summary (peak memory: CUDA tensors, or the process's peak RSS on the CPU):")
    print(format_summary(results))
    return 0
