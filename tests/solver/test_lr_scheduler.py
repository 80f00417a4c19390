from __future__ import annotations

import math
from bisect import bisect_right

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heron.solver.lr_scheduler import (
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
    _get_warmup_factor_at_iter,
)
from heron.solver.param_scheduler import (
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
)


def _optimizer(lrs=(0.1,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _assert_lrs(actual, expected):
    f64 = torch.float64
    torch.testing.assert_close(torch.tensor(actual, dtype=f64), torch.tensor(expected, dtype=f64))


def _run(optimizer, scheduler, num_iters):
    """Learning rate of every group at iterations 0..num_iters-1, as a train loop sees it."""
    lrs = []
    for _ in range(num_iters):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


@settings(max_examples=60, deadline=None)
@given(where=st.floats(min_value=0.0, max_value=0.999, allow_nan=False))
def test_linear_warmup_goes_from_factor_to_schedule_value_at_warmup_end(where):
    base = CosineParamScheduler(1.0, 0.0)
    sched = WarmupParamScheduler(base, warmup_factor=0.1, warmup_length=0.2)
    if where + 1e-6 <= 0.2:
        # line from 0.1 * base(0) = 0.1 to base(0.2), at fraction where / 0.2
        alpha = where / 0.2
        expected = base(0.2) * alpha + 0.1 * (1 - alpha)
    else:
        expected = base(where)  # "fixed": the cosine sees the global where
    assert sched(where) == pytest.approx(expected, rel=1e-12)


def test_warmup_with_rescale_interval_runs_whole_schedule_after_warmup():
    base = LinearParamScheduler(1.0, 0.0)
    sched = WarmupParamScheduler(base, 0.5, 0.2, "linear", rescale_interval=True)
    assert sched(0.0) == 0.5
    assert sched(0.1) == pytest.approx(0.75)  # halfway from 0.5 to base(0) = 1
    assert sched(0.6) == pytest.approx(0.5)  # base((0.6 - 0.2) / 0.8) = base(0.5)


def test_constant_warmup_holds_factor_times_start_value():
    sched = WarmupParamScheduler(ConstantParamScheduler(2.0), 0.25, 0.5, "constant")
    assert [sched(0.0), sched(0.4), sched(0.6)] == [0.5, 0.5, 2.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_method": "cubic"}, "warmup_method must be one of.*got 'cubic'"),
        ({"warmup_length": 1.5}, r"warmup_length must be in \[0, 1\], got 1.5"),
    ],
)
def test_warmup_param_scheduler_rejects_bad_arguments(kwargs, match):
    args = {"warmup_factor": 0.1, "warmup_length": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        WarmupParamScheduler(ConstantParamScheduler(1.0), **args)


def test_lr_multiplier_sets_base_lr_times_multiplier_each_iteration():
    optimizer = _optimizer((0.1, 0.02))
    multiplier = MultiStepParamScheduler([1.0, 0.5, 0.25], num_updates=6, milestones=[2, 4])
    scheduler = LRMultiplier(optimizer, multiplier, max_iter=6)
    factors = [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    expected = [[0.1 * f, 0.02 * f] for f in factors]
    _assert_lrs(_run(optimizer, scheduler, 6), expected)


def test_lr_multiplier_state_dict_holds_base_lrs_and_last_epoch_only():
    optimizer = _optimizer((0.1,))
    scheduler = LRMultiplier(optimizer, CosineParamScheduler(1.0, 0.0), max_iter=10)
    _run(optimizer, scheduler, 3)
    assert scheduler.state_dict() == {"base_lrs": [0.1], "last_epoch": 3}


def test_lr_multiplier_resumes_at_same_lr_after_state_dict_round_trip():
    optimizer = _optimizer((0.1,))
    scheduler = LRMultiplier(optimizer, CosineParamScheduler(1.0, 0.0), max_iter=10)
    _run(optimizer, scheduler, 4)
    state = scheduler.state_dict()
    reference = _run(optimizer, scheduler, 4)  # iterations 4..7

    # a fresh optimizer with another lr: the base_lrs in the state override it
    resumed_opt = _optimizer((0.7,))
    resumed = LRMultiplier(resumed_opt, CosineParamScheduler(1.0, 0.0), max_iter=10)
    resumed.load_state_dict(state)
    resumed_opt.step()
    resumed.step()  # the step at the end of iteration 4 in the original run
    resumed_lrs = _run(resumed_opt, resumed, 3)  # iterations 5..7
    # iteration 5: 0.1 * 0.5 * (1 + cos(pi * 5 / 10)) = 0.05
    assert resumed_lrs[0][0] == pytest.approx(0.05)
    assert resumed_lrs == reference[1:]


def test_lr_multiplier_rejects_a_plain_callable():
    with pytest.raises(ValueError, match="must be a ParamScheduler, got function"):
        LRMultiplier(_optimizer(), lambda where: 1.0, max_iter=10)


def test_lr_multiplier_rejects_non_positive_max_iter():
    with pytest.raises(ValueError, match="max_iter=\\) must be > 0, got 0"):
        LRMultiplier(_optimizer(), ConstantParamScheduler(1.0), max_iter=0)


@pytest.mark.parametrize(
    ("method", "it", "expected"),
    [
        ("linear", 0, 0.1),
        ("linear", 5, 0.1 * 0.5 + 0.5),  # alpha = 5 / 10
        ("linear", 10, 1.0),
        ("constant", 3, 0.1),
        ("constant", 12, 1.0),
    ],
)
def test_warmup_factor_at_iter(method, it, expected):
    assert _get_warmup_factor_at_iter(method, it, 10, 0.1) == pytest.approx(expected)


def test_warmup_factor_rejects_unknown_method():
    with pytest.raises(ValueError, match="got 'cubic'"):
        _get_warmup_factor_at_iter("cubic", 0, 10, 0.1)


def test_legacy_warmup_multistep_lr_formula():
    optimizer = _optimizer((0.2,))
    scheduler = WarmupMultiStepLR(
        optimizer, milestones=[4, 6], gamma=0.1, warmup_factor=0.5, warmup_iters=2
    )
    expected = []
    for it in range(8):
        warm = 0.5 * (1 - it / 2) + it / 2 if it < 2 else 1.0
        expected.append([0.2 * warm * 0.1 ** bisect_right([4, 6], it)])
    _assert_lrs(_run(optimizer, scheduler, 8), expected)


def test_legacy_warmup_multistep_lr_rejects_unsorted_milestones():
    with pytest.raises(ValueError, match=r"increasing integers, got \[5, 3\]"):
        WarmupMultiStepLR(_optimizer(), milestones=[5, 3])


def test_legacy_warmup_cosine_lr_formula():
    optimizer = _optimizer((0.2,))
    scheduler = WarmupCosineLR(
        optimizer, max_iters=8, warmup_factor=0.1, warmup_iters=3, warmup_method="constant"
    )
    expected = []
    for it in range(8):
        warm = 0.1 if it < 3 else 1.0
        expected.append([0.2 * warm * 0.5 * (1 + math.cos(math.pi * it / 8))])
    _assert_lrs(_run(optimizer, scheduler, 8), expected)


def test_legacy_schedulers_reject_unknown_warmup_method():
    with pytest.raises(ValueError, match="got 'cubic'"):
        WarmupCosineLR(_optimizer(), max_iters=8, warmup_method="cubic")
    with pytest.raises(ValueError, match="got 'cubic'"):
        WarmupMultiStepLR(_optimizer(), milestones=[2], warmup_method="cubic")


def test_lr_multiplier_with_last_iter_starts_at_the_next_iteration():
    optimizer = _optimizer((0.1,))
    optimizer.param_groups[0]["initial_lr"] = 0.2  # as restored from a checkpoint
    multiplier = MultiStepParamScheduler([1.0, 0.5], num_updates=10, milestones=[5])
    scheduler = LRMultiplier(optimizer, multiplier, max_iter=10, last_iter=4)
    # last finished iteration 4: the lr set is that of iteration 5, 0.2 * 0.5
    assert scheduler.last_epoch == 5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_lr_multiplier_accepts_fvcore_param_schedulers():
    # A stand-in with fvcore's class path, so configs naming fvcore's schedulers still work.
    fvcore_base = type("ParamScheduler", (), {"__module__": "fvcore.common.param_scheduler"})
    half = type("Half", (fvcore_base,), {"__call__": lambda self, where: 0.5})
    optimizer = _optimizer((0.1,))
    LRMultiplier(optimizer, half(), max_iter=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
