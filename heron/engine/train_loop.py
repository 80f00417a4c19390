"""Training loops: the hook-driven ``TrainerBase`` and the ``SimpleTrainer``/``AMPTrainer``
steps that run one optimizer update per iteration (Detectron2's names and semantics).

A Heron extension: hooks may call ``trainer.request_stop(reason)`` to end training after the
current iteration (early stopping); ``after_train`` hooks still run.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from heron.utils import comm
from heron.utils.env import get_rng_state, set_rng_state
from heron.utils.events import EventStorage, get_event_storage

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)


class HookBase:
    """Base class of the callbacks a :class:`TrainerBase` runs around each step.

    Each method runs in every process. ``self.trainer`` is a weak proxy of the trainer, set by
    :meth:`TrainerBase.register_hooks`; through it a hook reads ``iter``, ``max_iter``,
    ``storage``, ``model`` and so on. A hook with resumable state returns it from
    :meth:`state_dict`, and the trainer's checkpoints carry it.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, also when training raised."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after the backward pass of each iteration, before the optimizer step."""

    def after_step(self) -> None:
        """Called after each iteration."""

    def state_dict(self) -> dict[str, Any]:
        """Return the hook's resumable state (empty by default)."""
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict` (nothing by default)."""


class TrainerBase(abc.ABC):
    """Runs ``run_step`` from ``start_iter`` to ``max_iter`` with hooks around every step.

    Attributes:
        iter: the current iteration; equals ``max_iter`` after a run that finished.
        start_iter: the first iteration of this run.
        max_iter: iterations end before this number.
        storage: the :class:`EventStorage` open during training.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage | None = None
        self._stop_reason: str | None = None

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append hooks (``None`` entries are skipped); they run in the order given."""
        kept = [h for h in hooks if h is not None]
        for h in kept:
            if not isinstance(h, HookBase):
                raise TypeError(f"hooks must be HookBase instances, got {type(h).__name__}")
            # A weak proxy avoids a reference cycle between the trainer and its hooks.
            h.trainer = weakref.proxy(self)
        self._hooks.extend(kept)

    def request_stop(self, reason: str) -> None:
        """Stop after the current iteration (Heron extension, used by early stopping)."""
        self._stop_reason = str(reason)

    @property
    def stop_reason(self) -> str | None:
        """Why training stopped early, or None."""
        return self._stop_reason

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1``.

        Raises whatever a step or a hook raised, after running the ``after_train`` hooks.
        """
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = int(start_iter)
        self.max_iter = int(max_iter)
        self._stop_reason = None
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self._stop_reason is not None:
                        logger.info("Stopping at iteration %d: %s", self.iter, self._stop_reason)
                        break
                # iter == max_iter after a completed run (hooks read this in after_train);
                # after an early stop it is the next iteration to run.
                self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        assert self.storage is not None
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        assert self.storage is not None
        # storage.iter equals trainer.iter during the whole step.
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    @abc.abstractmethod
    def run_step(self) -> None:
        """One training iteration."""

    def state_dict(self) -> dict[str, Any]:
        """Return ``{"iteration": ..., "hooks": {hook class name: state}}``."""
        hooks_state = {}
        for h in self._hooks:
            state = h.state_dict()
            if state:
                name = type(h).__qualname__
                if name in hooks_state:
                    # Two hooks of one class cannot both be restored by name.
                    continue
                hooks_state[name] = state
        ret: dict[str, Any] = {"iteration": self.iter}
        if hooks_state:
            ret["hooks"] = hooks_state
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the iteration and the hooks' states from :meth:`state_dict`."""
        if "iteration" not in state_dict:
            raise KeyError(f"trainer state_dict has no 'iteration'; keys: {sorted(state_dict)}")
        self.iter = int(state_dict["iteration"])
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning("Cannot find the hook '%s', its state_dict is ignored.", key)


def _model_device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration on the sum of the model's losses.

    The model takes a batch from ``data_loader`` and returns a dict of scalar losses (or one
    scalar). With ``accumulation_steps=k`` (Heron extension) an iteration reads k batches,
    back-propagates each loss divided by k, and then steps the optimizer once: the gradient
    is that of the mean loss over the k batches, and the logged losses are those means.

    Exact resumption (Heron extension): ``state_dict`` records how many batches were read
    and the random generators' states; ``load_state_dict`` reads (and discards) that many
    batches from a fresh data-loader iterator, then restores the generators. With a
    deterministic loader (fixed seed) the resumed run then sees the same batches and random
    draws as an uninterrupted one. On CUDA this also needs deterministic kernels
    (``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG``): without
    them two uninterrupted runs already differ. Skipping costs the mapping of every skipped
    batch; set ``exact_resume = False`` to start the loader afresh instead, as Detectron2
    does.
    """

    exact_resume: bool = True

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        async_write_metrics: bool = False,
        accumulation_steps: int = 1,
    ) -> None:
        """
        Args:
            model: a module in training mode returning a loss dict.
            data_loader: an iterable of batches; it is iterated lazily and endlessly.
            optimizer: steps the model's parameters.
            gather_metric_period: write metrics every this many iterations.
            zero_grad_before_forward: zero the gradients before the forward pass (else after
                it, as Detectron2 does by default).
            async_write_metrics: write metrics from a background thread.
            accumulation_steps: batches whose gradients are summed per optimizer step.
        """
        super().__init__()
        if int(accumulation_steps) < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        if int(gather_metric_period) < 1:
            raise ValueError(f"gather_metric_period must be >= 1, got {gather_metric_period}")
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj: Iterator[Any] | None = None
        self.optimizer = optimizer
        self.gather_metric_period = int(gather_metric_period)
        self.zero_grad_before_forward = zero_grad_before_forward
        self.accumulation_steps = int(accumulation_steps)
        self.async_write_metrics = async_write_metrics
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1) if async_write_metrics else None
        )
        self._pending: list[concurrent.futures.Future] = []
        self._batches_read = 0

    @property
    def _data_loader_iter(self) -> Iterator[Any]:
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(self, data_loader_builder: Any) -> None:
        """Replace the data loader with ``data_loader_builder()`` (the old one is released)."""
        del self.data_loader
        self._data_loader_iter_obj = None
        self._batches_read = 0
        self.data_loader = data_loader_builder()

    def _next_batch(self) -> tuple[Any, float]:
        start = time.perf_counter()
        try:
            data = next(self._data_loader_iter)
            self._batches_read += 1
        except StopIteration:
            raise RuntimeError(
                f"the training data loader ran out at iteration {self.iter}; training needs "
                "an endless loader (e.g. TrainingSampler) or a smaller max_iter"
            ) from None
        return data, time.perf_counter() - start

    def _forward(self, data: Any) -> dict[str, torch.Tensor]:
        loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            return {"total_loss": loss_dict}
        if not isinstance(loss_dict, Mapping):
            raise TypeError(
                "in training the model must return a dict of losses or one loss tensor, "
                f"got {type(loss_dict).__name__}"
            )
        return dict(loss_dict)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The context of the forward pass (AMPTrainer: autocast)."""
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def run_step(self) -> None:
        """Read batches, forward, backward, write metrics, step the optimizer."""
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        k = self.accumulation_steps
        data_time = 0.0
        loss_sums: dict[str, torch.Tensor] = {}
        for i in range(k):
            data, dt = self._next_batch()
            data_time += dt
            with self._autocast():
                loss_dict = self._forward(data)
                losses = sum(loss_dict.values())
            if i == 0 and not self.zero_grad_before_forward:
                self.optimizer.zero_grad()
            self._backward(losses / k if k > 1 else losses)
            for name, v in loss_dict.items():
                v = v.detach().float()
                loss_sums[name] = loss_sums[name] + v if name in loss_sums else v
        self.after_backward()
        mean_losses = {name: v / k for name, v in loss_sums.items()} if k > 1 else loss_sums
        self._maybe_write_metrics(mean_losses, data_time)
        self._optimizer_step()

    def _maybe_write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        if (self.iter + 1) % self.gather_metric_period != 0:
            return
        if self._executor is None:
            self.write_metrics(loss_dict, data_time)
            return
        storage = get_event_storage()
        detached = {k: v.detach().cpu() for k, v in loss_dict.items()}
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(
            self._executor.submit(
                self.write_metrics, detached, data_time, iter=self.iter, storage=storage
            )
        )

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        prefix: str = "",
        iter: int | None = None,
        storage: EventStorage | None = None,
    ) -> None:
        """Average the losses over processes and put them in the event storage.

        Raises:
            FloatingPointError: the total loss is NaN or infinite (raised in every process,
                so that no process waits forever for the others).
        """
        storage = storage if storage is not None else get_event_storage()
        cur_iter = storage.iter if iter is None else iter
        metrics = {k: float(v.detach().cpu().item()) for k, v in loss_dict.items()}
        metrics["data_time"] = float(data_time)
        all_metrics = comm.all_gather(metrics)
        data_time = max(m.pop("data_time") for m in all_metrics)
        mean = {k: sum(m[k] for m in all_metrics) / len(all_metrics) for k in all_metrics[0]}
        total = sum(mean.values())
        if not math.isfinite(total):
            per_rank = {r: m for r, m in enumerate(all_metrics)}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={cur_iter}!\n"
                f"loss_dict = {mean}\nper process: {per_rank}"
            )
        if comm.is_main_process():
            storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
            storage.put_scalar(f"{prefix}total_loss", total, cur_iter=cur_iter)
            if len(mean) > 1:
                storage.put_scalars(cur_iter=cur_iter, **mean)

    def after_train(self) -> None:
        if self._executor is not None:
            for f in self._pending:
                f.result()  # re-raise errors of background writes
            self._pending = []
        super().after_train()

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        ret["data_batches_read"] = self._batches_read
        ret["rng"] = get_rng_state()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "optimizer" in state_dict:
            self.optimizer.load_state_dict(state_dict["optimizer"])
        if self.exact_resume and "data_batches_read" in state_dict:
            self._skip_batches(int(state_dict["data_batches_read"]))
            if "rng" in state_dict:
                set_rng_state(state_dict["rng"])

    def _skip_batches(self, n: int) -> None:
        """Restart the loader iterator and read ``n`` batches, to continue where a saved run
        stopped."""
        self._data_loader_iter_obj = None
        self._batches_read = 0
        if n:
            logger.info("Skipping %d batches of the data loader to resume exactly", n)
        for _ in range(n):
            self._next_batch()


_PRECISIONS = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _as_dtype(precision: torch.dtype | str) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        dtype = precision
    else:
        dtype = _PRECISIONS.get(str(precision).lower())
        if dtype is None:
            raise ValueError(
                f"AMP precision must be one of {sorted(_PRECISIONS)}, got {precision!r}"
            )
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"AMP precision must be float16 or bfloat16, got {dtype}")
    return dtype


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` with the forward pass under ``torch.autocast``.

    float16 uses a ``GradScaler`` (on CUDA, and on CPU where the installed PyTorch has one);
    bfloat16 needs no scaling and runs on CPU and GPU.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
        precision: torch.dtype | str = torch.float16,
        log_grad_scaler: bool = False,
        async_write_metrics: bool = False,
        accumulation_steps: int = 1,
    ) -> None:
        """
        Args:
            grad_scaler: the scaler to use; default: a new one for float16, none for bfloat16.
            precision: autocast dtype, torch.float16 or torch.bfloat16 (or their names).
            log_grad_scaler: put the scaler's scale in the event storage every iteration.
            Others: see :class:`SimpleTrainer`.
        """
        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period=gather_metric_period,
            zero_grad_before_forward=zero_grad_before_forward,
            async_write_metrics=async_write_metrics,
            accumulation_steps=accumulation_steps,
        )
        self.precision = _as_dtype(precision)
        self.device_type = _model_device_type(model)
        if grad_scaler is None and self.precision == torch.float16:
            grad_scaler = torch.amp.GradScaler(self.device_type)
        self.grad_scaler = grad_scaler
        self.log_grad_scaler = log_grad_scaler

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=self.device_type, dtype=self.precision)

    def _backward(self, losses: torch.Tensor) -> None:
        if self.grad_scaler is not None:
            losses = self.grad_scaler.scale(losses)
        losses.backward()

    def _optimizer_step(self) -> None:
        if self.log_grad_scaler and self.grad_scaler is not None:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        if self.grad_scaler is not None:
            # step() unscales the gradients first, so clipping inside optimizer.step() sees
            # true gradients, and skips the update when they hold inf/NaN.
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
