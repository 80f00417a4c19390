"""The evaluator interface and ``inference_on_dataset``, which runs a model over a data
loader and feeds every batch's inputs and outputs to an evaluator."""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict, abc
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from heron.utils.comm import get_world_size, is_main_process

__all__ = [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates a model's outputs over a dataset and computes metrics at the end.

    ``reset`` before a pass, ``process(inputs, outputs)`` after each batch, ``evaluate``
    once at the end. In distributed inference every process calls all three; ``evaluate``
    gathers the processes' data and returns the metrics on the main process
    (``{task: {metric: value}}``) and None elsewhere.
    """

    def reset(self) -> None:
        """Prepare for a new pass (clear accumulated predictions)."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Record one batch: the model's inputs and the matching outputs."""

    def evaluate(self) -> dict[str, Any] | None:
        """Return the metrics of everything processed since ``reset``."""
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators side by side; their results are merged into one dict."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        """Merge the evaluators' results.

        Raises:
            ValueError: two evaluators report the same task name.
        """
        results: dict[str, Any] = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if is_main_process() and result is not None:
                for key, value in result.items():
                    if key in results:
                        raise ValueError(
                            f"Different evaluators produce results with the same key {key!r} "
                            f"(second one: {type(evaluator).__name__})"
                        )
                    results[key] = value
        return results


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode inside the block and restore its previous mode after."""
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


def inference_on_dataset(
    model: nn.Module | Callable[[list[dict]], list[dict]],
    data_loader: Any,
    evaluator: DatasetEvaluator | Sequence[DatasetEvaluator] | None,
    callbacks: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run ``model`` on every batch of ``data_loader`` and return ``evaluator.evaluate()``.

    The model runs under ``torch.no_grad`` and, when it is an ``nn.Module``, in eval mode
    (restored afterwards). The log reports the time per batch, excluding the first
    ``min(5, len(data_loader) - 1)`` warm-up batches; a progress bar shows on a terminal.

    Args:
        model: a module or a callable taking a batch (list of dicts).
        data_loader: an iterable of batches with ``len``.
        evaluator: one evaluator, a list of them, or None (only timing).
        callbacks: optional functions called at "on_start", "before_inference",
            "after_inference" and "on_end".

    Returns:
        The evaluator's results on the main process ({} when it returns None).
    """
    callbacks = callbacks or {}
    unknown = set(callbacks) - {"on_start", "before_inference", "after_inference", "on_end"}
    if unknown:
        raise ValueError(f"unknown callback names {sorted(unknown)}")
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, abc.Sequence):
        evaluator = DatasetEvaluators(evaluator)
    num_devices = get_world_size()
    total = len(data_loader)
    logger.info("Start inference on %d batches", total)
    evaluator.reset()

    num_warmup = min(5, total - 1)
    data_time = compute_time = eval_time = 0.0
    start_time = time.perf_counter()
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        bar = stack.enter_context(
            tqdm(total=total, desc="inference", disable=None, leave=False, dynamic_ncols=True)
        )
        callbacks.get("on_start", lambda: None)()
        start_data = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            data_time += time.perf_counter() - start_data
            if idx == num_warmup:
                start_time = time.perf_counter()
                data_time = compute_time = eval_time = 0.0
            start_compute = time.perf_counter()
            callbacks.get("before_inference", lambda: None)()
            outputs = model(inputs)
            callbacks.get("after_inference", lambda: None)()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - start_compute
            start_eval = time.perf_counter()
            evaluator.process(inputs, outputs)
            eval_time += time.perf_counter() - start_eval
            bar.update(1)
            start_data = time.perf_counter()
        callbacks.get("on_end", lambda: None)()

    timed = max(total - num_warmup, 1)
    total_time = time.perf_counter() - start_time
    logger.info(
        "Total inference time: %s (%.6f s / iter per device, on %d devices)",
        datetime.timedelta(seconds=int(total_time)),
        total_time / timed,
        num_devices,
    )
    logger.info(
        "Total inference pure compute time: %s (%.6f s / iter per device, on %d devices); "
        "data %.6f s / iter, evaluator %.6f s / iter",
        datetime.timedelta(seconds=int(compute_time)),
        compute_time / timed,
        num_devices,
        data_time / timed,
        eval_time / timed,
    )
    results = evaluator.evaluate()
    # An evaluator may return None on non-main processes; callers get a dict everywhere.
    return {} if results is None else results
