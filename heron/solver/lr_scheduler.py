"""Learning-rate schedulers: warmup around a `ParamScheduler`, and the torch scheduler
(`LRMultiplier`) that applies one to an optimizer, with Detectron2's names.

`WarmupMultiStepLR` and `WarmupCosineLR` are Detectron2's older schedulers, deprecated
there in favour of `LRMultiplier`; they are kept so code that builds them still runs.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from heron.solver.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

__all__ = [
    "LRMultiplier",
    "LRScheduler",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
]

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("constant", "linear")


class WarmupParamScheduler(CompositeParamScheduler):
    """Puts a warmup in front of a schedule.

    Over the first `warmup_length` of training the value is the warmup: "constant" holds
    `warmup_factor * scheduler(0)`; "linear" goes from `warmup_factor * scheduler(0)` to the
    schedule's value where the warmup ends. After it, `scheduler` takes over, seeing the
    global `where` (so warmup covers the schedule's start), or with
    `rescale_interval=True` the remaining interval stretched to [0, 1) (so the whole
    schedule runs after the warmup, and linear warmup ends at `scheduler(0)`).

    Args:
        scheduler: the schedule to warm up.
        warmup_factor: the multiplier of `scheduler(0)` at the start of warmup.
        warmup_length: the share of training spent warming up, in [0, 1].
        warmup_method: "linear" or "constant".
        rescale_interval: whether `scheduler` sees the interval after warmup as [0, 1).
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ) -> None:
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {list(_WARMUP_METHODS)}, got {warmup_method!r}"
            )
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(f"warmup_length must be in [0, 1], got {warmup_length}")
        end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start_value)
        else:
            warmup = LinearParamScheduler(start_value, end_value)
        super().__init__(
            [warmup, scheduler],
            lengths=[warmup_length, 1 - warmup_length],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
        )


def _is_param_scheduler(multiplier: Any) -> bool:
    """True for Heron's `ParamScheduler`s and for fvcore's, when a config names those."""
    if isinstance(multiplier, ParamScheduler):
        return True
    return any(
        klass.__name__ == "ParamScheduler" and klass.__module__ == "fvcore.common.param_scheduler"
        for klass in type(multiplier).__mro__
    )


class LRMultiplier(LRScheduler):
    """Sets each group's learning rate to `base_lr * multiplier(iter / max_iter)`.

    `base_lr` is the group's learning rate when the scheduler is created (its
    "initial_lr"). Call `step()` once per iteration, after `optimizer.step()`. Since the
    multiplier is stateless, `state_dict()` keeps only `base_lrs` and `last_epoch`, as
    Detectron2's does, so checkpoints are interchangeable.

    Args:
        optimizer: the optimizer whose learning rates are set.
        multiplier: a `ParamScheduler` of progress in [0, 1].
        max_iter: total number of iterations (> 0).
        last_iter: index of the last finished iteration; -1 for a fresh start. When >= 0,
            every param group needs an "initial_lr" (as torch requires).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not _is_param_scheduler(multiplier):
            raise ValueError(
                "LRMultiplier(multiplier=) must be a ParamScheduler, "
                f"got {type(multiplier).__name__}"
            )
        if max_iter <= 0:
            raise ValueError(f"LRMultiplier(max_iter=) must be > 0, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict[str, Any]:
        """Return `base_lrs` and `last_epoch`, the only state (the multiplier has none)."""
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> list[float]:
        """Return the learning rate of each param group at iteration `last_epoch`."""
        multiplier = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]


def _get_warmup_factor_at_iter(
    method: str, iter: int, warmup_iters: int, warmup_factor: float
) -> float:
    """Return the learning-rate multiplier of warmup at iteration `iter`.

    1 from `warmup_iters` on. Before: "constant" gives `warmup_factor`; "linear" gives
    `warmup_factor * (1 - alpha) + alpha` with `alpha = iter / warmup_iters`.
    """
    if iter >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iter / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"warmup method must be one of {list(_WARMUP_METHODS)}, got {method!r}")


class WarmupMultiStepLR(LRScheduler):
    """Deprecated: warmup, then the learning rate times `gamma` at each milestone.

    lr = base_lr * warmup_factor(iter) * gamma ** (number of milestones <= iter).
    Use `LRMultiplier` with `WarmupParamScheduler(MultiStepParamScheduler(...))` instead.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        logger.warning("WarmupMultiStepLR is deprecated; use LRMultiplier with a ParamScheduler.")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing integers, got {list(milestones)}")
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {list(_WARMUP_METHODS)}, got {warmup_method!r}"
            )
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """Return the learning rate of each param group at iteration `last_epoch`."""
        warmup_factor = _get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        decay = self.gamma ** bisect_right(self.milestones, self.last_epoch)
        return [base_lr * warmup_factor * decay for base_lr in self.base_lrs]

    def _compute_values(self) -> list[float]:
        return self.get_lr()


class WarmupCosineLR(LRScheduler):
    """Deprecated: a half cosine from `base_lr` to 0 over `max_iters`, times warmup.

    lr = base_lr * warmup_factor(iter) * 0.5 * (1 + cos(pi * iter / max_iters)). The
    warmup multiplies the cosine rather than delaying it, which differs little when
    warmup_iters << max_iters. Use `LRMultiplier` with
    `WarmupParamScheduler(CosineParamScheduler(1, 0))` instead.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        logger.warning("WarmupCosineLR is deprecated; use LRMultiplier with a ParamScheduler.")
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {list(_WARMUP_METHODS)}, got {warmup_method!r}"
            )
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """Return the learning rate of each param group at iteration `last_epoch`."""
        warmup_factor = _get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        # Detectron2's order of operations: ((base_lr * warmup) * 0.5) * (1 + cos).
        cosine = 1.0 + math.cos(math.pi * self.last_epoch / self.max_iters)
        return [base_lr * warmup_factor * 0.5 * cosine for base_lr in self.base_lrs]

    def _compute_values(self) -> list[float]:
        return self.get_lr()
