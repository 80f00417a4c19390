"""Training hooks with Detectron2's names and semantics (``detectron2.engine.hooks``).

Each hook is a small :class:`HookBase` that runs in every process. Hooks that should run
only in the main process (writers, checkpointers) are registered only there by the trainer,
as in Detectron2. Heron's extra hooks (``ValidationLoss``, ``EarlyStopping``, ``EMAHook``)
live in ``hooks_extra.py`` and ``ema.py`` and are re-exported here.
"""

from __future__ import annotations

import datetime
import logging
import math
import operator
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from heron.checkpoint.checkpointer import PeriodicCheckpointer as _PeriodicCheckpointer
from heron.engine.ema import EMAHook
from heron.engine.hooks_extra import EarlyStopping, ValidationLoss
from heron.engine.precise_bn import get_bn_modules, update_bn_stats
from heron.engine.train_loop import HookBase
from heron.evaluation.testing import flatten_results_dict
from heron.utils import comm
from heron.utils.events import EventStorage
from heron.utils.file_io import PathManager

__all__ = [
    "BestCheckpointer",
    "CallbackHook",
    "EMAHook",
    "EarlyStopping",
    "EvalHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "TorchMemoryStats",
    "TorchProfiler",
    "ValidationLoss",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook made of plain functions, each called with the trainer."""

    def __init__(
        self,
        *,
        before_train: Callable[[Any], None] | None = None,
        after_train: Callable[[Any], None] | None = None,
        before_step: Callable[[Any], None] | None = None,
        after_step: Callable[[Any], None] | None = None,
    ) -> None:
        self._before_train = before_train
        self._after_train = after_train
        self._before_step = before_step
        self._after_step = after_step

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)
        # The functions may be closures over the trainer: drop them to break the cycle.
        self._before_train = self._after_train = None
        self._before_step = self._after_step = None

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)


class _Timer:
    """A stopwatch that can be paused and resumed (fvcore's ``Timer``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._paused: float | None = None
        self._total_paused = 0.0

    def pause(self) -> None:
        if self._paused is None:
            self._paused = time.perf_counter()

    def resume(self) -> None:
        if self._paused is not None:
            self._total_paused += time.perf_counter() - self._paused
            self._paused = None

    def seconds(self) -> float:
        end = self._paused if self._paused is not None else time.perf_counter()
        return end - self._start - self._total_paused


class IterationTimer(HookBase):
    """Puts the time of each step as "time" and logs the training speed at the end.

    The first ``warmup_iter`` iterations are slow (allocations, cudnn autotuning): they are
    left out of the summary, and "time" is put from the ``warmup_iter``-th step on. The step
    time covers ``run_step`` and the hooks registered after this one, so register it first.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        """
        Args:
            warmup_iter: iterations at the start left out of the timing.
        """
        self._warmup_iter = int(warmup_iter)
        self._step_timer = _Timer()
        self._start_time = time.perf_counter()
        self._total_timer = _Timer()

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()
        self._timed_iters = 0

    def after_train(self) -> None:
        total_time = time.perf_counter() - self._start_time
        time_in_steps = self._total_timer.seconds()
        hook_time = total_time - time_in_steps
        if self._timed_iters > 0 and time_in_steps > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                self._timed_iters,
                _format_seconds(time_in_steps),
                time_in_steps / self._timed_iters,
            )
        logger.info(
            "Total training time: %s (%s on hooks)",
            _format_seconds(total_time),
            _format_seconds(hook_time),
        )

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        # the current step is done but not yet counted: hence + 1
        iter_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            self.trainer.storage.put_scalars(time=self._step_timer.seconds())
            self._timed_iters += 1
        else:
            # still warming up: restart the overall clocks
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class PeriodicWriter(HookBase):
    """Calls ``write()`` of each writer every ``period`` iterations and at the last one.

    At the end of training the writers write once more (for events put by other
    ``after_train`` hooks) and are closed. Writers are usually :class:`EventWriter`; any
    object with ``write()`` and ``close()`` works.
    """

    def __init__(self, writers: Iterable[Any], period: int = 20) -> None:
        """
        Args:
            writers: objects with ``write()`` and ``close()`` methods.
            period: iterations between writes.
        """
        self._writers = list(writers)
        for w in self._writers:
            if not (callable(getattr(w, "write", None)) and callable(getattr(w, "close", None))):
                raise TypeError(
                    f"writers must have write() and close() methods, got {type(w).__name__}"
                )
        if int(period) < 1:
            raise ValueError(f"period must be a positive integer, got {period}")
        self._period = int(period)

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0 or (
            self.trainer.iter == self.trainer.max_iter - 1
        ):
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            writer.write()
            writer.close()


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    """:class:`heron.checkpoint.PeriodicCheckpointer` as a hook.

    Saves "{file_prefix}_{iter:07d}" every ``period`` iterations and "{file_prefix}_final"
    after the last one (``max_iter`` is read from the trainer). As a hook it cannot pass
    extra data to ``save`` besides "iteration". Heron extension: when a hook stopped
    training early (``trainer.request_stop``), "{file_prefix}_final" is saved at the end too.
    """

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        self.step(self.trainer.iter)

    def after_train(self) -> None:
        if getattr(self.trainer, "stop_reason", None) is not None:
            # trainer.iter is the next iteration to run; the last one done is iter - 1
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=self.trainer.iter - 1)


class BestCheckpointer(HookBase):
    """Saves "{file_prefix}.pth" whenever an evaluation metric reaches a new best.

    Runs at the same iterations as :class:`EvalHook` with the same ``eval_period`` and reads
    the metric that it put in the storage, so register it after the EvalHook.
    """

    def __init__(
        self,
        eval_period: int,
        checkpointer: Any,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ) -> None:
        """
        Args:
            eval_period: iterations between evaluations, as given to the EvalHook.
            checkpointer: has ``save(name, **kwargs)``, e.g. a ``Checkpointer``.
            val_metric: the storage name of the metric, e.g. "bbox/AP50".
            mode: "max" if larger is better, "min" if smaller is.
            file_prefix: name of the saved checkpoint.
        """
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self._period = int(eval_period)
        self._val_metric = val_metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric: float | None = None
        self.best_iter: int | None = None

    def _update_best(self, val: float, iteration: int) -> bool:
        if math.isnan(val) or math.isinf(val):
            return False
        self.best_metric = val
        self.best_iter = iteration
        return True

    def _best_checking(self) -> None:
        metric_tuple = self.trainer.storage.latest().get(self._val_metric)
        if metric_tuple is None:
            logger.warning(
                "Given val metric %s does not seem to be computed/stored; not checkpointing "
                "based on it.",
                self._val_metric,
            )
            return
        latest_metric, metric_iter = metric_tuple
        if self.best_metric is None:
            if self._update_best(latest_metric, metric_iter):
                self._checkpointer.save(self._file_prefix, iteration=metric_iter)
                logger.info("Saved first model at %.5f @ %d steps", latest_metric, metric_iter)
        elif self._compare(latest_metric, self.best_metric):
            self._checkpointer.save(self._file_prefix, iteration=metric_iter)
            logger.info(
                "Saved best model: latest %s is %.5f, better than the last best %.5f @ "
                "iteration %d.",
                self._val_metric,
                latest_metric,
                self.best_metric,
                self.best_iter,
            )
            self._update_best(latest_metric, metric_iter)
        else:
            logger.info(
                "Not saving: latest %s is %.5f, not better than the best %.5f @ iteration %d.",
                self._val_metric,
                latest_metric,
                self.best_metric,
                self.best_iter,
            )

    def after_step(self) -> None:
        # the same iterations as EvalHook
        next_iter = self.trainer.iter + 1
        if (
            self._period > 0
            and next_iter % self._period == 0
            and next_iter != self.trainer.max_iter
        ):
            self._best_checking()

    def after_train(self) -> None:
        # the same condition as EvalHook's final evaluation
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._best_checking()

    def state_dict(self) -> dict[str, Any]:
        # Heron extension: a resumed run remembers the best so far (Detectron2 forgets it
        # and overwrites model_best at the first evaluation after resuming)
        if self.best_metric is None:
            return {}
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if "best_metric" in state_dict:
            self.best_metric = float(state_dict["best_metric"])
            self.best_iter = int(state_dict["best_iter"])


class LRScheduler(HookBase):
    """Steps the learning-rate scheduler after every iteration and puts "lr" in the storage.

    "lr" is the learning rate used by the step that just ran, taken from the parameter
    group with the most parameters (Detectron2's heuristic).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
    ) -> None:
        """
        Args:
            optimizer: default: ``trainer.optimizer``.
            scheduler: a torch LR scheduler, or a ``ParamScheduler`` (a callable of the
                training progress in [0, 1)) that is wrapped into an ``LRMultiplier`` in
                ``before_train``; default: ``trainer.scheduler``.
        """
        self._optimizer = optimizer
        self._scheduler = scheduler

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        scheduler = self.scheduler
        if not callable(getattr(scheduler, "step", None)) and callable(scheduler):
            from heron.solver.lr_scheduler import LRMultiplier

            self._scheduler = LRMultiplier(
                self._optimizer, scheduler, self.trainer.max_iter, last_iter=self.trainer.iter - 1
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    @staticmethod
    def get_best_param_group_id(optimizer: torch.optim.Optimizer) -> int:
        """Return the index of the parameter group whose "lr" is reported.

        The group with the most parameters; when every group has one parameter, the first
        group with the most common initial learning rate.
        """
        largest_group = max(len(g["params"]) for g in optimizer.param_groups)
        if largest_group == 1:
            lr_count = Counter(g["lr"] for g in optimizer.param_groups)
            lr = lr_count.most_common()[0][0]
            return next(i for i, g in enumerate(optimizer.param_groups) if g["lr"] == lr)
        return next(
            i for i, g in enumerate(optimizer.param_groups) if len(g["params"]) == largest_group
        )

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    @property
    def scheduler(self) -> Any:
        return self._scheduler or self.trainer.scheduler

    def state_dict(self) -> dict[str, Any]:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)


class EvalHook(HookBase):
    """Runs an evaluation function every ``eval_period`` iterations and after training.

    The function's (nested) dict of numbers is flattened to "task/metric" names and put in
    the storage with ``smoothing_hint=False``. Evaluation at the last iteration is left to
    ``after_train``, so that it runs once.
    """

    def __init__(
        self,
        eval_period: int,
        eval_function: Callable[[], Mapping[str, Any] | None],
        eval_after_train: bool = True,
    ) -> None:
        """
        Args:
            eval_period: iterations between evaluations; 0 evaluates only after training.
            eval_function: takes no argument, returns a nested dict of numbers (or
                nothing). It runs in every process, which lets it be collective.
            eval_after_train: evaluate once more when training reached ``max_iter``.
        """
        self._period = int(eval_period)
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        results = self._func()
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(
                    f"EvalHook: eval_function must return a dict, got {type(results).__name__}"
                )
            flattened = flatten_results_dict(results)
            for k, v in flattened.items():
                try:
                    flattened[k] = float(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        "EvalHook: eval_function should return a nested dict of floats; "
                        f"got {k!r}: {v!r}"
                    ) from e
            self.trainer.storage.put_scalars(**flattened, smoothing_hint=False)
        # Processes may finish evaluating at different times; start the next step together.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        # the evaluation at the last iteration runs in after_train
        if (
            self._period > 0
            and next_iter % self._period == 0
            and next_iter != self.trainer.max_iter
        ):
            self._do_eval()

    def after_train(self) -> None:
        # iter + 1 < max_iter: training failed or stopped early; do not evaluate
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        # the function is likely a closure holding the trainer: drop it to break the cycle
        self._func = None


class PreciseBN(HookBase):
    """Recomputes BatchNorm statistics every ``period`` iterations and after the last one.

    See :func:`heron.engine.precise_bn.update_bn_stats`. Events the model puts while the
    statistics are computed go to a throw-away storage.
    """

    def __init__(
        self, period: int, model: torch.nn.Module, data_loader: Iterable[Any], num_iter: int
    ) -> None:
        """
        Args:
            period: iterations between updates; 0 updates only after the last iteration.
            model: its BN layers in training mode are updated.
            data_loader: an iterable of model inputs, read through one iterator across
                updates (so it should be endless).
            num_iter: batches per update.
        """
        self._disabled = not get_bn_modules(model)
        if self._disabled:
            logger.info(
                "PreciseBN is disabled because the model has no BatchNorm layer in training mode."
            )
            return
        self._model = model
        self._data_loader = data_loader
        self._num_iter = int(num_iter)
        self._period = int(period)
        self._data_iter: Iterator[Any] | None = None

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_final = next_iter == self.trainer.max_iter
        if is_final or (self._period > 0 and next_iter % self._period == 0):
            self.update_stats()

    def update_stats(self) -> None:
        """Recompute the statistics now."""
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)
        data_iter = self._data_iter

        def batches() -> Iterator[Any]:
            for count in range(1, self._num_iter + 1):
                if count % 100 == 0:
                    logger.info("Running precise-BN ... %d/%d iterations.", count, self._num_iter)
                try:
                    yield next(data_iter)
                except StopIteration:
                    return

        with EventStorage():  # events of these forward passes are discarded
            logger.info(
                "Running precise-BN for %d iterations... (statistics differ from run to run "
                "with the batches drawn)",
                self._num_iter,
            )
            update_bn_stats(self._model, batches(), self._num_iter)


class TorchProfiler(HookBase):
    """Profiles the steps selected by ``enable_predicate`` with ``torch.profiler``.

    Each profiled iteration writes a chrome trace (json) under ``output_dir``: with
    ``save_tensorboard``, a TensorBoard profiler log in
    ``output_dir/log/profiler-tensorboard-iter{iter}/``; otherwise
    ``output_dir/profiler-trace-iter{iter}.json``.
    """

    def __init__(
        self,
        enable_predicate: Callable[[Any], bool],
        output_dir: str,
        *,
        activities: Iterable[torch.profiler.ProfilerActivity] | None = None,
        save_tensorboard: bool = True,
    ) -> None:
        """
        Args:
            enable_predicate: called with the trainer before each step; profile if True.
            output_dir: where the traces go (local path or URL).
            activities: profiler activities; default, torch.profiler's (CPU, and CUDA when
                available).
            save_tensorboard: write TensorBoard profiler logs instead of a plain trace.
        """
        self._enable_predicate = enable_predicate
        self._activities = activities
        self._output_dir = output_dir
        self._save_tensorboard = save_tensorboard
        self._profiler: torch.profiler.profile | None = None

    def before_step(self) -> None:
        if not self._enable_predicate(self.trainer):
            self._profiler = None
            return
        on_trace_ready = None
        if self._save_tensorboard:
            log_dir = os.path.join(
                self._output_dir, "log", f"profiler-tensorboard-iter{self.trainer.iter}"
            )
            on_trace_ready = torch.profiler.tensorboard_trace_handler(
                log_dir, f"worker{comm.get_rank()}"
            )
        self._profiler = torch.profiler.profile(
            activities=self._activities,
            on_trace_ready=on_trace_ready,
            record_shapes=True,
            profile_memory=True,
            with_stack=True,
            with_flops=True,
        )
        self._profiler.__enter__()

    def after_step(self) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        if not self._save_tensorboard:
            PathManager.mkdirs(self._output_dir)
            out_file = os.path.join(
                self._output_dir, f"profiler-trace-iter{self.trainer.iter}.json"
            )
            if "://" not in out_file:
                self._profiler.export_chrome_trace(out_file)
            else:  # the profiler writes local files only: go through a temporary one
                with tempfile.TemporaryDirectory(prefix="heron_profiler") as d:
                    tmp_file = os.path.join(d, "tmp.json")
                    self._profiler.export_chrome_trace(tmp_file)
                    with open(tmp_file) as f:
                        content = f.read()
                with PathManager.open(out_file, "w") as f:
                    f.write(content)
        self._profiler = None


class TorchMemoryStats(HookBase):
    """Logs CUDA memory statistics every ``period`` iterations, at most ``max_runs`` times.

    After the last run it also logs ``torch.cuda.memory_summary()``. Peak statistics are
    reset after each report, so each "max" is the peak since the previous one. Without CUDA
    it logs that once and does nothing.
    """

    def __init__(self, period: int = 20, max_runs: int = 10) -> None:
        """
        Args:
            period: iterations between reports.
            max_runs: how many reports at most.
        """
        if int(period) < 1:
            raise ValueError(f"period must be a positive integer, got {period}")
        self._period = int(period)
        self._max_runs = int(max_runs)
        self._runs = 0
        self._logged_no_cuda = False

    def after_step(self) -> None:
        if self._runs >= self._max_runs:
            return
        it = self.trainer.iter
        if (it + 1) % self._period != 0 and it != self.trainer.max_iter - 1:
            return
        if not torch.cuda.is_available():
            if not self._logged_no_cuda:
                logger.info("TorchMemoryStats: CUDA is not available; no memory stats to log.")
                self._logged_no_cuda = True
            return
        mb = 1024.0 * 1024.0
        logger.info(
            "iter: %d  max_reserved_mem: %.0fMB  reserved_mem: %.0fMB  max_allocated_mem: "
            "%.0fMB  allocated_mem: %.0fMB",
            it,
            torch.cuda.max_memory_reserved() / mb,
            torch.cuda.memory_reserved() / mb,
            torch.cuda.max_memory_allocated() / mb,
            torch.cuda.memory_allocated() / mb,
        )
        self._runs += 1
        if self._runs == self._max_runs:
            logger.info("\n%s", torch.cuda.memory_summary())
        torch.cuda.reset_peak_memory_stats()
