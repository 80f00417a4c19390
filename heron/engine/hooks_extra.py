"""Heron's extra training hooks: validation loss and early stopping (not in Detectron2).

Both are re-exported by ``heron.engine.hooks``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from heron.engine.train_loop import HookBase
from heron.utils import comm

__all__ = ["EarlyStopping", "ValidationLoss"]

logger = logging.getLogger(__name__)


def _norm_layers_with_stats(model: nn.Module) -> list[nn.Module]:
    """BatchNorm-like modules (BatchNorm*, SyncBatchNorm, InstanceNorm) that keep statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]


class ValidationLoss(HookBase):
    """Puts the model's losses on a held-out loader every ``period`` iterations and at the end.

    The model runs in training mode (it returns losses only then) under ``torch.no_grad``
    over one full pass of ``data_loader``. The losses are those of training: BatchNorm
    normalizes with the statistics of each validation batch. Its running statistics
    (``running_mean``, ``running_var``, ``num_batches_tracked``) are saved before the pass
    and restored after it, so the validation data leaves no trace in the model. Other
    randomness (dropout, sampling of proposals) is as in training.

    Each loss ``<name>`` is put as "val_<name>", and their sum as "val_total_loss", with
    ``smoothing_hint=False``: the mean over all batches of all processes. With
    SyncBatchNorm every process must yield the same number of batches.
    """

    def __init__(self, period: int, model: nn.Module, data_loader: Iterable[Any]) -> None:
        """
        Args:
            period: iterations between evaluations; 0 evaluates only after the last one.
            model: the trained model; returns a dict of scalar losses (or one scalar) in
                training mode.
            data_loader: a finite iterable of model inputs, iterated anew each time.
        """
        if int(period) < 0:
            raise ValueError(f"period must be >= 0, got {period}")
        self._period = int(period)
        self._model = model
        self._data_loader = data_loader

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_final = next_iter == self.trainer.max_iter
        if is_final or (self._period > 0 and next_iter % self._period == 0):
            losses = self.compute_losses()
            self.trainer.storage.put_scalars(**losses, smoothing_hint=False)

    def compute_losses(self) -> dict[str, float]:
        """Return ``{"val_<name>": mean loss, ..., "val_total_loss": their sum}``.

        Raises:
            ValueError: no process's loader yielded a batch.
        """
        sums, num_batches = self._local_loss_sums()
        gathered = comm.all_gather((sums, num_batches))
        total_batches = sum(n for _, n in gathered)
        if total_batches == 0:
            raise ValueError("ValidationLoss: data_loader yielded no batch")
        names = sorted({k for s, _ in gathered for k in s})
        means = {k: sum(s.get(k, 0.0) for s, _ in gathered) / total_batches for k in names}
        result = {f"val_{k}": v for k, v in means.items() if k != "total_loss"}
        result["val_total_loss"] = sum(means.values())
        return result

    def _local_loss_sums(self) -> tuple[dict[str, float], int]:
        model = self._model
        was_training = model.training
        norms = _norm_layers_with_stats(model)
        saved = [{k: b.detach().clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
        sums: dict[str, torch.Tensor] = {}
        num_batches = 0
        try:
            model.train()
            with torch.no_grad():
                for batch in self._data_loader:
                    loss_dict = model(batch)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    if not isinstance(loss_dict, Mapping):
                        raise TypeError(
                            "ValidationLoss: the model must return a dict of losses or one loss "
                            f"tensor in training mode, got {type(loss_dict).__name__}"
                        )
                    for name, value in loss_dict.items():
                        value = value.detach().float()
                        sums[name] = sums[name] + value if name in sums else value
                    num_batches += 1
        finally:
            with torch.no_grad():
                for m, buffers in zip(norms, saved):
                    for k, b in m.named_buffers(recurse=False):
                        b.copy_(buffers[k])
            model.train(was_training)
        # one host sync per pass, not per batch
        return {k: float(v.cpu()) for k, v in sums.items()}, num_batches


class EarlyStopping(HookBase):
    """Stops training when a metric has not improved for ``patience`` evaluations.

    Runs at the iterations where :class:`EvalHook` with the same ``eval_period`` evaluates,
    and reads the metric it put in the storage, so register it after the EvalHook (or after
    a :class:`ValidationLoss` with that period, for metric "val_total_loss"). An evaluation
    improves when the metric beats the best so far by more than ``min_delta``; NaN or
    infinite values do not. A metric missing from the storage, or not updated since the last
    check, is logged and not counted. After ``patience`` evaluations in a row without improvement
    it calls ``trainer.request_stop(reason)``: training ends after the current iteration and
    the ``after_train`` hooks run as usual.

    In several processes the main process decides (evaluators often return results there
    only), and every process follows its decision.
    """

    def __init__(
        self,
        eval_period: int,
        metric: str,
        mode: str = "max",
        patience: int = 5,
        min_delta: float = 0.0,
    ) -> None:
        """
        Args:
            eval_period: iterations between evaluations, as given to the EvalHook.
            metric: the storage name of the metric, e.g. "bbox/AP".
            mode: "max" if larger is better, "min" if smaller is.
            patience: evaluations without improvement before stopping.
            min_delta: the least change that counts as an improvement.
        """
        if int(eval_period) < 1:
            raise ValueError(f"eval_period must be a positive integer, got {eval_period}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if int(patience) < 1:
            raise ValueError(f"patience must be a positive integer, got {patience}")
        if not float(min_delta) >= 0.0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self._period = int(eval_period)
        self._metric = metric
        self._mode = mode
        self._patience = int(patience)
        self._min_delta = float(min_delta)
        self.best_metric: float | None = None
        self.best_iter: int | None = None
        self.num_bad_evals = 0
        self._last_iter: int | None = None

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            if comm.is_main_process():
                self._check()
            self._sync_from_main_process()
            if self.num_bad_evals >= self._patience:
                self.trainer.request_stop(
                    f"{self._metric} has not improved by more than {self._min_delta} for "
                    f"{self.num_bad_evals} evaluations (best {self.best_metric} at iteration "
                    f"{self.best_iter})"
                )

    def _is_improvement(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_metric is None:
            return True
        if self._mode == "max":
            return value > self.best_metric + self._min_delta
        return value < self.best_metric - self._min_delta

    def _check(self) -> None:
        entry = self.trainer.storage.latest().get(self._metric)
        if entry is None:
            logger.warning(
                "EarlyStopping: metric %s is not in the event storage; nothing to compare",
                self._metric,
            )
            return
        value, metric_iter = entry
        if metric_iter == self._last_iter:
            logger.warning(
                "EarlyStopping: %s was not updated since iteration %d; nothing to compare",
                self._metric,
                metric_iter,
            )
            return
        self._last_iter = metric_iter
        if self._is_improvement(value):
            self.best_metric, self.best_iter = float(value), metric_iter
            self.num_bad_evals = 0
            return
        self.num_bad_evals += 1
        logger.info(
            "EarlyStopping: %s = %s is no improvement on %s (%d/%d)",
            self._metric,
            value,
            self.best_metric,
            self.num_bad_evals,
            self._patience,
        )

    def _sync_from_main_process(self) -> None:
        if comm.get_world_size() > 1:
            self.load_state_dict(comm.all_gather(self.state_dict())[0])

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_metric": self.best_metric,
            "best_iter": self.best_iter,
            "num_bad_evals": self.num_bad_evals,
            "last_iter": self._last_iter,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = [k for k in ("best_metric", "best_iter", "num_bad_evals") if k not in state_dict]
        if missing:
            raise KeyError(f"EarlyStopping state_dict lacks {missing}; got {sorted(state_dict)}")
        best = state_dict["best_metric"]
        self.best_metric = None if best is None else float(best)
        best_iter = state_dict["best_iter"]
        self.best_iter = None if best_iter is None else int(best_iter)
        self.num_bad_evals = int(state_dict["num_bad_evals"])
        last_iter = state_dict.get("last_iter")
        self._last_iter = None if last_iter is None else int(last_iter)
