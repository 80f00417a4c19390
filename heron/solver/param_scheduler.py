"""Parameter schedules: maps from training progress `where` in [0, 1) to a number.

These have the names, arguments and formulas of `fvcore.common.param_scheduler` (which
Detectron2's lazy configs use), so that configs written for fvcore's schedulers run
unchanged with `heron.solver.param_scheduler` in their place. fvcore is not a dependency.
A schedule holds no state: the same `where` always gives the same value.
"""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Sequence

__all__ = [
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "ExponentialParamScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "PolynomialDecayParamScheduler",
    "StepParamScheduler",
    "StepWithFixedGammaParamScheduler",
]


class ParamScheduler(abc.ABC):
    """Base class of a schedule: `scheduler(where)` gives the value at progress `where`.

    `where` is the fraction of training done, in [0, 1). Subclasses implement `__call__`.
    """

    # Slack added to `where` before it is compared with a boundary, so that a `where`
    # computed as iter / max_iter in floating point lands on the side it means to.
    WHERE_EPSILON = 1e-6

    @abc.abstractmethod
    def __call__(self, where: float) -> float:
        """Return the value at progress `where` in [0, 1)."""


class ConstantParamScheduler(ParamScheduler):
    """The same value everywhere in [0, 1)."""

    def __init__(self, value: float) -> None:
        self._value = value

    def __call__(self, where: float) -> float:
        if where >= 1.0:
            raise ValueError(f"where must be in [0, 1) for ConstantParamScheduler, got {where}")
        return self._value


class CosineParamScheduler(ParamScheduler):
    """Half a cosine from `start_value` at where=0 to `end_value` at where=1.

    value = end + 0.5 * (start - end) * (1 + cos(pi * where)).
    """

    def __init__(self, start_value: float, end_value: float) -> None:
        self._start_value = start_value
        self._end_value = end_value

    def __call__(self, where: float) -> float:
        span = self._start_value - self._end_value
        return self._end_value + 0.5 * span * (1 + math.cos(math.pi * where))


class ExponentialParamScheduler(ParamScheduler):
    """`start_value * decay ** where`: from `start_value` to `start_value * decay`."""

    def __init__(self, start_value: float, decay: float) -> None:
        self._start_value = start_value
        self._decay = decay

    def __call__(self, where: float) -> float:
        return self._start_value * (self._decay**where)


class LinearParamScheduler(ParamScheduler):
    """A straight line from `start_value` at where=0 to `end_value` at where=1."""

    def __init__(self, start_value: float, end_value: float) -> None:
        self._start_value = start_value
        self._end_value = end_value

    def __call__(self, where: float) -> float:
        # Same order of operations as fvcore, so values match to the last bit.
        return self._end_value * where + self._start_value * (1 - where)


class MultiStepParamScheduler(ParamScheduler):
    """Piecewise-constant values that change at given update counts.

    `values[i]` holds from update `milestones[i - 1]` (0 for i = 0) up to `milestones[i]`.
    The update count at `where` is `int((where + WHERE_EPSILON) * num_updates)`.

    Args:
        values: the value of each piece, K >= 1 of them.
        num_updates: total number of updates. When None, it is `milestones[-1]` and
            `milestones` then holds K entries, the last being the total.
        milestones: K - 1 strictly increasing update counts in (0, num_updates), where the
            value changes. When None, the K pieces get equal widths,
            ceil(num_updates / K) each.
    """

    def __init__(
        self,
        values: Sequence[float],
        num_updates: int | None = None,
        milestones: Sequence[int] | None = None,
    ) -> None:
        if num_updates is None and milestones is None:
            raise ValueError("MultiStepParamScheduler needs num_updates or milestones, got neither")
        if milestones is None:
            width = math.ceil(num_updates / float(len(values)))
            milestones = [width * (i + 1) for i in range(len(values) - 1)]
        else:
            expected = len(values) - int(num_updates is not None)
            if not (isinstance(milestones, Sequence) and len(milestones) == expected):
                raise ValueError(
                    f"milestones must be a list of {expected} update counts for "
                    f"{len(values)} values (num_updates={num_updates}), got {milestones!r}"
                )
        milestones = list(milestones)
        if num_updates is None:
            num_updates, milestones = milestones[-1], milestones[:-1]
        if num_updates < len(values):
            raise ValueError(
                f"num_updates must be at least the number of values ({len(values)}), "
                f"got {num_updates}"
            )
        previous = 0
        for milestone in milestones:
            if milestone >= num_updates:
                raise ValueError(
                    f"milestones must be smaller than num_updates={num_updates}, "
                    f"got milestone {milestone}"
                )
            if milestone <= previous:
                raise ValueError(
                    f"milestones must be strictly increasing and positive, got {milestone} "
                    f"after {previous}"
                )
            previous = milestone
        self._param_schedule = list(values)
        self._num_updates = num_updates
        self._milestones = milestones

    def __call__(self, where: float) -> float:
        if where > 1.0:
            raise ValueError(f"where must be in [0, 1] for MultiStepParamScheduler, got {where}")
        update = int((where + self.WHERE_EPSILON) * self._num_updates)
        return self._param_schedule[bisect.bisect_right(self._milestones, update)]


class PolynomialDecayParamScheduler(ParamScheduler):
    """`base_value * (1 - where) ** power`: from `base_value` down to 0."""

    def __init__(self, base_value: float, power: float) -> None:
        self._base_value = base_value
        self._power = power

    def __call__(self, where: float) -> float:
        return self._base_value * (1 - where) ** self._power


class StepParamScheduler(ParamScheduler):
    """Splits [0, 1) into `len(values)` equal pieces, one value each (the last at 1).

    Args:
        num_updates: total number of updates (> 0); checked but, as in fvcore, not used
            by the formula.
        values: the value of each piece, at least one.
    """

    def __init__(self, num_updates: int | float, values: Sequence[float]) -> None:
        if num_updates <= 0:
            raise ValueError(f"num_updates must be > 0, got {num_updates}")
        if not (isinstance(values, Sequence) and len(values) > 0):
            raise ValueError(f"values must be a non-empty list of numbers, got {values!r}")
        self._param_schedule = list(values)

    def __call__(self, where: float) -> float:
        if where > 1.0:
            raise ValueError(f"where must be in [0, 1] for StepParamScheduler, got {where}")
        index = int((where + self.WHERE_EPSILON) * len(self._param_schedule))
        # fvcore indexes past the end for where in [1 - WHERE_EPSILON, 1]; take the last
        # value instead, since LRMultiplier asks for where = 1 after the final iteration.
        return self._param_schedule[min(index, len(self._param_schedule) - 1)]


class StepWithFixedGammaParamScheduler(ParamScheduler):
    """Starts at `base_value` and multiplies it by `gamma` `num_decays` times.

    The `num_decays + 1` values take equal shares of [0, 1), as in `StepParamScheduler`.

    Args:
        base_value: the first value, > 0.
        num_decays: number of decays, a positive integer.
        gamma: the factor of each decay, > 0.
        num_updates: total number of updates, a positive integer.
    """

    def __init__(self, base_value: float, num_decays: int, gamma: float, num_updates: int) -> None:
        for name, number in (("base_value", base_value), ("gamma", gamma)):
            if isinstance(number, bool) or not (isinstance(number, (int, float)) and number > 0):
                raise ValueError(f"{name} must be a positive number, got {number!r}")
        for name, number in (("num_decays", num_decays), ("num_updates", num_updates)):
            if isinstance(number, bool) or not (isinstance(number, int) and number > 0):
                raise ValueError(f"{name} must be a positive integer, got {number!r}")
        self.base_value = base_value
        self.num_decays = num_decays
        self.gamma = gamma
        self.num_updates = num_updates
        values = [base_value]
        for _ in range(num_decays):
            values.append(values[-1] * gamma)
        self._step_param_scheduler = StepParamScheduler(num_updates=num_updates, values=values)

    def __call__(self, where: float) -> float:
        return self._step_param_scheduler(where)


_INTERVAL_SCALINGS = ("rescaled", "fixed")


class CompositeParamScheduler(ParamScheduler):
    """Runs several schedules one after another over consecutive pieces of [0, 1).

    Args:
        schedulers: the schedules, in order.
        lengths: the share of [0, 1) of each schedule; they must sum to 1 (within 1e-3;
            the last is adjusted so the sum is exact).
        interval_scaling: one per schedule. "rescaled": the schedule sees its own piece
            stretched to [0, 1); "fixed": it sees the global `where`.
    """

    def __init__(
        self,
        schedulers: Sequence[ParamScheduler],
        lengths: Sequence[float],
        interval_scaling: Sequence[str],
    ) -> None:
        if len(schedulers) != len(lengths):
            raise ValueError(
                f"schedulers and lengths must have the same length, got {len(schedulers)} "
                f"schedulers and {len(lengths)} lengths"
            )
        if len(schedulers) == 0:
            raise ValueError("schedulers must hold at least one scheduler, got none")
        if len(interval_scaling) != len(schedulers):
            raise ValueError(
                f"interval_scaling must have one entry per scheduler ({len(schedulers)}), "
                f"got {list(interval_scaling)!r}"
            )
        if abs(sum(lengths) - 1.0) >= 1e-3:
            raise ValueError(f"lengths must sum to 1, got {list(lengths)!r} (sum {sum(lengths)})")
        lengths = list(lengths)  # a copy: fvcore edits the caller's list here
        if sum(lengths) != 1.0:
            lengths[-1] = 1.0 - sum(lengths[:-1])
        for scaling in interval_scaling:
            if scaling not in _INTERVAL_SCALINGS:
                raise ValueError(
                    f"interval_scaling entries must be one of {list(_INTERVAL_SCALINGS)}, "
                    f"got {scaling!r}"
                )
        self._lengths = lengths
        self._schedulers = list(schedulers)
        self._interval_scaling = list(interval_scaling)

    def __call__(self, where: float) -> float:
        # The piece holding `where`: the first whose end lies beyond where + epsilon.
        i = 0
        running_total = self._lengths[0]
        while where + self.WHERE_EPSILON > running_total and i < len(self._schedulers) - 1:
            i += 1
            running_total += self._lengths[i]
        scheduler_where = where
        if self._interval_scaling[i] == "rescaled":
            start = running_total - self._lengths[i]
            # A piece of length 0 is reached only past its end (the last piece); fvcore
            # divides by zero there.
            length = self._lengths[i]
            scheduler_where = (where - start) / length if length > 0 else 0.0
        return self._schedulers[i](scheduler_where)
