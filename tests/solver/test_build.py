from __future__ import annotations

import copy
import logging
import math
from bisect import bisect_right

import pytest
import torch
from torch import nn

from heron.config.config import get_cfg
from heron.layers.batch_norm import FrozenBatchNorm2d
from heron.solver.build import (
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from heron.solver.lr_scheduler import LRMultiplier, WarmupMultiStepLR

F64 = torch.float64


def _solver_cfg(**solver):
    cfg = get_cfg()
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _lrs_per_iter(cfg, num_iters):
    """lr of group 0 at iterations 0..num_iters-1, stepping a real SGD through the scheduler."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, LRMultiplier)
    lrs = []
    for _ in range(num_iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return torch.tensor(lrs, dtype=F64)


def test_multistep_with_linear_warmup_matches_formula_at_every_iteration():
    cfg = _solver_cfg(
        BASE_LR=0.2, MAX_ITER=12, STEPS=(6, 9), GAMMA=0.1, WARMUP_ITERS=4, WARMUP_FACTOR=0.1
    )
    expected = []
    for it in range(12):
        alpha = it / 4
        warm = 0.1 * (1 - alpha) + alpha if it < 4 else 1.0
        expected.append(0.2 * warm * 0.1 ** bisect_right([6, 9], it))
    torch.testing.assert_close(_lrs_per_iter(cfg, 12), torch.tensor(expected, dtype=F64))


def test_multistep_schedule_equals_legacy_warmup_multistep_lr():
    cfg = _solver_cfg(BASE_LR=0.2, MAX_ITER=12, STEPS=(6, 9), WARMUP_ITERS=4, WARMUP_FACTOR=0.1)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.2)
    legacy = WarmupMultiStepLR(optimizer, [6, 9], 0.1, warmup_factor=0.1, warmup_iters=4)
    legacy_lrs = []
    for _ in range(12):
        legacy_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        legacy.step()
    torch.testing.assert_close(_lrs_per_iter(cfg, 12), torch.tensor(legacy_lrs, dtype=F64))


def test_constant_warmup_holds_warmup_factor():
    cfg = _solver_cfg(
        BASE_LR=1.0,
        MAX_ITER=8,
        STEPS=(6,),
        GAMMA=0.5,
        WARMUP_ITERS=3,
        WARMUP_FACTOR=0.25,
        WARMUP_METHOD="constant",
    )
    expected = [0.25] * 3 + [1.0] * 3 + [0.5] * 2
    torch.testing.assert_close(_lrs_per_iter(cfg, 8), torch.tensor(expected, dtype=F64))


def test_steps_beyond_max_iter_are_ignored_with_a_warning(caplog):
    cfg = _solver_cfg(BASE_LR=1.0, MAX_ITER=6, STEPS=(3, 50), GAMMA=0.5, WARMUP_ITERS=0)
    with caplog.at_level(logging.WARNING, logger="heron.solver.build"):
        lrs = _lrs_per_iter(cfg, 6)
    assert "larger than SOLVER.MAX_ITER" in caplog.text
    torch.testing.assert_close(lrs, torch.tensor([1.0] * 3 + [0.5] * 3, dtype=F64))


def test_cosine_schedule_ends_at_base_lr_end():
    cfg = _solver_cfg(
        LR_SCHEDULER_NAME="WarmupCosineLR",
        BASE_LR=0.4,
        BASE_LR_END=0.1,
        MAX_ITER=10,
        WARMUP_ITERS=0,
    )
    end = 0.1 / 0.4
    expected = [
        0.4 * (end + 0.5 * (1 - end) * (1 + math.cos(math.pi * it / 10))) for it in range(10)
    ]
    torch.testing.assert_close(_lrs_per_iter(cfg, 10), torch.tensor(expected, dtype=F64))


def test_cosine_linear_warmup_ends_on_the_cosine():
    cfg = _solver_cfg(
        LR_SCHEDULER_NAME="WarmupCosineLR",
        BASE_LR=1.0,
        BASE_LR_END=0.0,
        MAX_ITER=10,
        WARMUP_ITERS=2,
        WARMUP_FACTOR=0.5,
    )
    cos = [0.5 * (1 + math.cos(math.pi * it / 10)) for it in range(10)]
    # warmup: line from 0.5 * cos(0) = 0.5 to cos(where = 0.2), halfway at iteration 1
    expected = [0.5, 0.5 * 0.5 + 0.5 * cos[2]] + cos[2:]
    torch.testing.assert_close(_lrs_per_iter(cfg, 10), torch.tensor(expected, dtype=F64))


def test_step_with_fixed_gamma_schedule():
    cfg = _solver_cfg(
        LR_SCHEDULER_NAME="WarmupStepWithFixedGammaLR",
        BASE_LR=1.0,
        MAX_ITER=9,
        GAMMA=0.5,
        NUM_DECAYS=2,
        WARMUP_ITERS=0,
    )
    expected = [1.0] * 3 + [0.5] * 3 + [0.25] * 3
    torch.testing.assert_close(_lrs_per_iter(cfg, 9), torch.tensor(expected, dtype=F64))


def test_rescale_interval_starts_schedule_after_warmup():
    cfg = _solver_cfg(
        BASE_LR=1.0,
        MAX_ITER=10,
        STEPS=(5,),
        GAMMA=0.5,
        WARMUP_ITERS=2,
        WARMUP_FACTOR=0.5,
        RESCALE_INTERVAL=True,
    )
    # after warmup the multistep sees (it/10 - 0.2) / 0.8; it reaches 5/10 at it = 6
    expected = [0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    torch.testing.assert_close(_lrs_per_iter(cfg, 10), torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize(
    ("solver", "match"),
    [
        ({"LR_SCHEDULER_NAME": "Poly"}, r"LR_SCHEDULER_NAME must be one of \['WarmupMultiStepLR'"),
        (
            {"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": 0.5, "BASE_LR": 0.1},
            "BASE_LR_END",
        ),
        ({"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR": 0.0}, "BASE_LR must be > 0"),
        ({"MAX_ITER": 0}, "MAX_ITER must be > 0, got 0"),
        ({"WARMUP_METHOD": "cubic"}, "warmup_method must be one of"),
    ],
)
def test_build_lr_scheduler_rejects_bad_config(solver, match):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=match):
        build_lr_scheduler(_solver_cfg(**solver), optimizer)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = FrozenBatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.fc_again = self.fc  # shared: its parameters must be listed once
        self.fixed = nn.Linear(2, 2)
        self.fixed.requires_grad_(False)


def _groups_by_param(groups):
    """{id(param): hyper-parameters} and a check that no parameter is listed twice."""
    found = {}
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            assert id(p) not in found
            found[id(p)] = hyper
    return found


def test_default_params_give_norm_and_bias_their_hyperparameters():
    net = _Net()
    groups = get_default_optimizer_params(
        net,
        base_lr=1.0,
        weight_decay=1e-4,
        weight_decay_norm=0.0,
        bias_lr_factor=2.0,
        weight_decay_bias=0.5,
    )
    got = _groups_by_param(groups)
    plain = {"lr": 1.0, "weight_decay": 1e-4}
    norm_weight = {"lr": 1.0, "weight_decay": 0.0}
    bias = {"lr": 2.0, "weight_decay": 0.5}  # the bias override wins over the norm decay
    expected = {
        id(net.conv.weight): plain, id(net.conv.bias): bias,
        id(net.bn.weight): norm_weight, id(net.bn.bias): bias,
        id(net.gn.weight): norm_weight, id(net.gn.bias): bias,
        id(net.fc.weight): plain, id(net.fc.bias): bias,
    }  # fmt: skip
    assert got == expected  # no frozen buffers, no requires_grad=False parameters
    assert len(groups) == 3  # merged by hyper-parameters, in order of first appearance
    assert [len(g["params"]) for g in groups] == [2, 4, 2]
    assert groups[0]["params"][0] is net.conv.weight


def test_default_params_without_hyperparameters_leave_optimizer_defaults():
    groups = get_default_optimizer_params(_Net())
    assert len(groups) == 1 and set(groups[0]) == {"params"}
    assert len(groups[0]["params"]) == 8


def test_default_params_apply_overrides_and_lr_factor_func():
    net = _Net()
    overrides = {"weight": {"weight_decay": 0.3}}
    groups = get_default_optimizer_params(
        net,
        base_lr=1.0,
        overrides=overrides,
        lr_factor_func=lambda name: 0.5 if name.startswith("conv.") else 1.0,
    )
    got = _groups_by_param(groups)
    assert got[id(net.conv.weight)] == {"lr": 0.5, "weight_decay": 0.3}
    assert got[id(net.conv.bias)] == {"lr": 0.5}
    assert got[id(net.fc.weight)] == {"lr": 1.0, "weight_decay": 0.3}
    assert overrides == {"weight": {"weight_decay": 0.3}}  # the caller's dict is unchanged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bias_lr_factor": 2.0}, "bias_lr_factor=2.0 needs base_lr"),
        ({"lr_factor_func": lambda name: 1.0}, "lr_factor_func needs base_lr"),
        ({"weight_decay_bias": 0.0, "overrides": {"bias": {"lr": 1.0}}}, r"overrides\['bias'\]"),
    ],
)
def test_default_params_reject_conflicting_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_default_optimizer_params(_Net(), **kwargs)


def test_reduce_param_groups_merges_equal_hyperparameters_in_first_seen_order():
    a, b, c, d = (nn.Parameter(torch.zeros(1)) for _ in range(4))
    groups = reduce_param_groups(
        [
            {"params": [a], "lr": 1.0, "weight_decay": 0.0},
            {"params": [b, c], "lr": 2.0},
            {"params": [d], "weight_decay": 0.0, "lr": 1.0},  # same as a's, other key order
            {"params": [c], "lr": 1.0, "weight_decay": 0.0},  # later entry wins for c
        ]
    )
    assert [{k: v for k, v in g.items() if k != "params"} for g in groups] == [
        {"lr": 1.0, "weight_decay": 0.0},
        {"lr": 2.0},
    ]
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(a), id(c), id(d)], [id(b)]]


def test_reduce_param_groups_keeps_param_names_with_their_params():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    groups = reduce_param_groups(
        [
            {"params": [a], "param_names": ["x.a"], "lr": 1.0},
            {"params": [b], "param_names": ["x.b"], "lr": 1.0},
        ]
    )
    assert len(groups) == 1 and groups[0]["param_names"] == ["x.a", "x.b"]


def test_reduce_param_groups_of_nothing_is_empty_and_missing_params_is_an_error():
    assert reduce_param_groups([]) == []
    with pytest.raises(KeyError, match="param group 0 has no 'params'"):
        reduce_param_groups([{"lr": 1.0}])


def test_build_optimizer_sgd_reads_solver_keys():
    cfg = _solver_cfg(
        BASE_LR=0.05, MOMENTUM=0.8, NESTEROV=True, WEIGHT_DECAY=1e-3, WEIGHT_DECAY_NORM=0.0
    )
    optimizer = build_optimizer(cfg, _Net())
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 1e-3]  # norm parameters, everything else
    assert all(g["lr"] == 0.05 for g in optimizer.param_groups)


def test_build_optimizer_adamw_reads_betas_and_eps():
    cfg = _solver_cfg(
        OPTIMIZER="AdamW", BASE_LR=1e-3, BETAS=(0.8, 0.95), EPS=1e-6, WEIGHT_DECAY=0.05
    )
    optimizer = build_optimizer(cfg, _Net())
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.8, 0.95) and optimizer.defaults["eps"] == 1e-6
    assert optimizer.defaults["weight_decay"] == 0.05


def test_build_optimizer_rejects_unknown_optimizer():
    with pytest.raises(
        ValueError, match=r"OPTIMIZER must be one of \['SGD', 'AdamW'\], got 'Adam'"
    ):
        build_optimizer(_solver_cfg(OPTIMIZER="Adam"), _Net())


def _clip_cfg(clip_type, clip_value=1.0, norm_type=2.0):
    cfg = _solver_cfg(BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    return cfg


def _grad_model():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 3
    return model


@pytest.mark.parametrize(
    ("clip_type", "norm_type", "reference"),
    [
        ("value", 2.0, lambda ps: [nn.utils.clip_grad_value_(p, 0.5) for p in ps]),
        ("norm", 2.0, lambda ps: [nn.utils.clip_grad_norm_(p, 0.5, 2.0) for p in ps]),
        ("norm", math.inf, lambda ps: [nn.utils.clip_grad_norm_(p, 0.5, math.inf) for p in ps]),
        ("full_model", 2.0, lambda ps: nn.utils.clip_grad_norm_(ps, 0.5, 2.0)),
        ("full_model", 1.0, lambda ps: nn.utils.clip_grad_norm_(ps, 0.5, 1.0)),
    ],
)
def test_gradient_clipping_matches_torch_utils_on_a_copy(clip_type, norm_type, reference):
    model = _grad_model()
    expected = copy.deepcopy(model)
    for p_ref, p in zip(expected.parameters(), model.parameters()):
        p_ref.grad = p.grad.clone()
    reference(list(expected.parameters()))
    before = [p.detach().clone() for p in model.parameters()]

    optimizer = build_optimizer(_clip_cfg(clip_type, 0.5, norm_type), model)
    assert type(optimizer).__name__ == "SGDWithGradientClip"
    optimizer.step()
    for p, p_ref, p0 in zip(model.parameters(), expected.parameters(), before):
        torch.testing.assert_close(p.grad, p_ref.grad)
        torch.testing.assert_close(p.detach(), p0 - p_ref.grad)  # SGD with lr 1, no momentum


def test_gradient_clipping_actually_changes_large_gradients():
    model = _grad_model()
    original = [p.grad.clone() for p in model.parameters()]
    build_optimizer(_clip_cfg("value", 0.5), model).step()
    assert any(not torch.equal(p.grad, g) for p, g in zip(model.parameters(), original))
    assert all(p.grad.abs().max() <= 0.5 for p in model.parameters())


def test_maybe_add_gradient_clipping_is_identity_when_disabled():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert maybe_add_gradient_clipping(get_cfg(), optimizer) is optimizer
    assert maybe_add_gradient_clipping(get_cfg(), torch.optim.SGD) is torch.optim.SGD


def test_maybe_add_gradient_clipping_on_an_instance_swaps_its_class():
    param = nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, -0.2])
    optimizer = torch.optim.SGD([param], lr=1.0)
    # wrapping twice must clip twice without recursing into itself
    wrapped = maybe_add_gradient_clipping(_clip_cfg("value", 0.5), optimizer)
    wrapped = maybe_add_gradient_clipping(_clip_cfg("value", 0.5), wrapped)
    assert wrapped is optimizer and isinstance(optimizer, torch.optim.SGD)
    optimizer.step()
    torch.testing.assert_close(param.detach(), torch.tensor([-0.5, 0.2]))


def test_maybe_add_gradient_clipping_rejects_unknown_type_and_non_optimizers():
    with pytest.raises(
        ValueError, match=r"CLIP_TYPE must be one of \['value', 'norm', 'full_model'\], got 'l2'"
    ):
        maybe_add_gradient_clipping(_clip_cfg("l2"), torch.optim.SGD)
    with pytest.raises(TypeError, match="got Linear"):
        maybe_add_gradient_clipping(_clip_cfg("value"), nn.Linear(1, 1))
