"""Build the optimizer and learning-rate scheduler from a config, with Detectron2's names.

`get_default_optimizer_params` gives norm layers and biases their own hyper-parameters;
`reduce_param_groups` merges parameters whose hyper-parameters agree into few groups (the
multi-tensor optimizers are much faster with few groups). Heron adds AdamW
(`SOLVER.OPTIMIZER`) and a "full_model" gradient-clipping type to Detectron2's set.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import torch
from torch import nn

from heron.config.config import CfgNode
from heron.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from heron.solver.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

__all__ = [
    "GradientClipType",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]

logger = logging.getLogger(__name__)

_GradientClipperInput = torch.Tensor | Iterable[torch.Tensor]
_GradientClipper = Callable[[_GradientClipperInput], None]

# Detectron2's set of norm layers, whose affine parameters get WEIGHT_DECAY_NORM. Subclasses
# count too: NaiveSyncBatchNorm is a BatchNorm2d. (FrozenBatchNorm2d keeps its affine
# parameters in buffers, so it never contributes a parameter.)
NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


class GradientClipType(Enum):
    """How `maybe_add_gradient_clipping` clips gradients (`SOLVER.CLIP_GRADIENTS.CLIP_TYPE`)."""

    VALUE = "value"  # each element to [-CLIP_VALUE, CLIP_VALUE]
    NORM = "norm"  # each parameter's gradient to norm <= CLIP_VALUE
    FULL_MODEL = "full_model"  # Heron: all gradients together to norm <= CLIP_VALUE


def _create_gradient_clipper(clip_cfg: CfgNode) -> tuple[GradientClipType, _GradientClipper]:
    """Return the clip type and the function that clips a parameter (or all of them)."""
    choices = [t.value for t in GradientClipType]
    if clip_cfg.CLIP_TYPE not in choices:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of {choices}, got {clip_cfg.CLIP_TYPE!r}"
        )
    clip_type = GradientClipType(clip_cfg.CLIP_TYPE)
    clip_value = float(clip_cfg.CLIP_VALUE)
    norm_type = float(clip_cfg.NORM_TYPE)

    def clip_grad_value(params: _GradientClipperInput) -> None:
        torch.nn.utils.clip_grad_value_(params, clip_value)

    def clip_grad_norm(params: _GradientClipperInput) -> None:
        torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type)

    if clip_type is GradientClipType.VALUE:
        return clip_type, clip_grad_value
    return clip_type, clip_grad_norm


def _generate_optimizer_class_with_gradient_clipping(
    optimizer: type[torch.optim.Optimizer],
    *,
    per_param_clipper: _GradientClipper | None = None,
    global_clipper: _GradientClipper | None = None,
) -> type[torch.optim.Optimizer]:
    """Return a subclass of `optimizer` whose `step` clips the gradients first.

    Exactly one of `per_param_clipper` (called on each parameter) and `global_clipper`
    (called once on all parameters) is given.
    """
    assert (per_param_clipper is None) != (global_clipper is None)

    def optimizer_wgc_step(self: torch.optim.Optimizer, closure: Callable | None = None) -> Any:
        with torch.no_grad():
            if per_param_clipper is not None:
                for group in self.param_groups:
                    for p in group["params"]:
                        per_param_clipper(p)
            else:
                all_params = itertools.chain(*[g["params"] for g in self.param_groups])
                global_clipper(all_params)
        # The base class by name, not super(type(self), self), so that wrapping twice
        # does not recurse forever.
        return optimizer.step(self, closure)

    return type(optimizer.__name__ + "WithGradientClip", (optimizer,), {"step": optimizer_wgc_step})


def maybe_add_gradient_clipping(
    cfg: CfgNode, optimizer: torch.optim.Optimizer | type[torch.optim.Optimizer]
) -> torch.optim.Optimizer | type[torch.optim.Optimizer]:
    """Make `optimizer` clip gradients before each step if SOLVER.CLIP_GRADIENTS.ENABLED.

    CLIP_TYPE "value" clips each gradient element to [-CLIP_VALUE, CLIP_VALUE]; "norm"
    rescales each parameter's gradient to an L-NORM_TYPE norm of at most CLIP_VALUE;
    "full_model" (Heron) does the same for the norm of all gradients taken together.

    Args:
        cfg: the config.
        optimizer: an optimizer instance, whose class is swapped for a clipping subclass
            (as Detectron2 does), or an optimizer class, for which the subclass is returned.

    Returns:
        The same instance, or the new class; `optimizer` itself when clipping is off.
    """
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer_type = type(optimizer)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        optimizer_type = optimizer
    else:
        raise TypeError(
            "optimizer must be a torch.optim.Optimizer or a subclass of it, "
            f"got {type(optimizer).__name__}"
        )
    clip_type, clipper = _create_gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS)
    if clip_type is GradientClipType.FULL_MODEL:
        clipped_type = _generate_optimizer_class_with_gradient_clipping(
            optimizer_type, global_clipper=clipper
        )
    else:
        clipped_type = _generate_optimizer_class_with_gradient_clipping(
            optimizer_type, per_param_clipper=clipper
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer.__class__ = clipped_type
        return optimizer
    return clipped_type


_OPTIMIZERS = ("SGD", "AdamW")


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by SOLVER.OPTIMIZER ("SGD" or "AdamW") for `model`.

    Parameter groups come from `get_default_optimizer_params` (BASE_LR, WEIGHT_DECAY_NORM,
    BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS); WEIGHT_DECAY is the optimizer's default. SGD reads
    MOMENTUM and NESTEROV, AdamW reads BETAS and EPS. Gradient clipping is added per
    SOLVER.CLIP_GRADIENTS.
    """
    name = cfg.SOLVER.OPTIMIZER
    if name not in _OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {list(_OPTIMIZERS)}, got {name!r}")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    if name == "SGD":
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer_type(
            params,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
    optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_type(
        params,
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.SOLVER.BETAS),
        eps=cfg.SOLVER.EPS,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float | None = None,
    weight_decay: float | None = None,
    weight_decay_norm: float | None = None,
    bias_lr_factor: float | None = 1.0,
    weight_decay_bias: float | None = None,
    lr_factor_func: Callable[[str], float] | None = None,
    overrides: dict[str, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Return optimizer parameter groups for `model`, with norm and bias hyper-parameters.

    Every trainable parameter appears once, even if several modules share it. A
    parameter gets "lr" = base_lr and "weight_decay" = weight_decay (when given); the
    affine parameters of norm layers get `weight_decay_norm`; parameters named "bias" get
    `base_lr * bias_lr_factor` and `weight_decay_bias`; then `lr_factor_func(full name)`
    scales "lr", and `overrides[local name]` sets anything last. Groups with equal
    hyper-parameters are merged by `reduce_param_groups`.

    Args:
        model: the model.
        base_lr: learning rate of every group; keys not given are left to the
            optimizer's defaults.
        weight_decay: weight decay of every group.
        weight_decay_norm: weight decay of norm-layer parameters.
        bias_lr_factor: multiplier of base_lr for biases (needs base_lr when != 1).
        weight_decay_bias: weight decay of biases.
        lr_factor_func: maps a full parameter name ("backbone.res2.0.conv1.weight") to a
            multiplier of its learning rate (needs base_lr).
        overrides: hyper-parameters by local parameter name, e.g.
            {"pos_embed": {"weight_decay": 0.0}}. Not modified.

    Returns:
        A list of dicts with "params" and hyper-parameter keys, for `torch.optim`.
    """
    overrides = {key: dict(value) for key, value in (overrides or {}).items()}
    defaults: dict[str, float] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides: dict[str, float] = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError(f"bias_lr_factor={bias_lr_factor} needs base_lr, got None")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if bias_overrides:
        if "bias" in overrides:
            raise ValueError(
                "overrides['bias'] conflicts with bias_lr_factor/weight_decay_bias; "
                "give only one of them"
            )
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("lr_factor_func needs base_lr, got None")

    params: list[dict[str, Any]] = []
    seen: set[torch.Tensor] = set()  # by identity: a shared parameter is listed once
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            hyperparams = copy.copy(defaults)
            if isinstance(module, NORM_MODULE_TYPES) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                hyperparams["lr"] *= lr_factor_func(f"{module_name}.{param_name}")
            hyperparams.update(overrides.get(param_name, {}))
            params.append({"params": [value], **hyperparams})
    return reduce_param_groups(params)


def _expand_param_groups(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Split groups into one dict per parameter; later groups overwrite earlier keys."""
    per_param: dict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    for index, item in enumerate(params):
        if "params" not in item:
            raise KeyError(f"param group {index} has no 'params' key, got keys {list(item)}")
        hyperparams = {k: v for k, v in item.items() if k not in ("params", "param_names")}
        if "param_names" in item:
            for name, param in zip(item["param_names"], item["params"]):
                per_param[param].update({"param_names": [name], "params": [param], **hyperparams})
        else:
            for param in item["params"]:
                per_param[param].update({"params": [param], **hyperparams})
    return list(per_param.values())


def _freeze(value: Any) -> Any:
    """Make a hyper-parameter value hashable (lists such as betas become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def reduce_param_groups(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge parameter groups whose hyper-parameters are equal.

    Groups are first split per parameter (a parameter named in several groups takes the
    later groups' values), then parameters with equal hyper-parameters (compared
    regardless of key order) are joined. Groups keep the order in which their first
    parameter appeared, and parameters keep their order within a group; "param_names"
    follow their parameters.

    Args:
        params: torch.optim parameter groups, each a dict with "params".

    Returns:
        The merged groups.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for item in _expand_param_groups(params):
        hyperparams = {k: v for k, v in item.items() if k not in ("params", "param_names")}
        key = tuple(sorted((k, _freeze(v)) for k, v in hyperparams.items()))
        groups[key].append(item)
    merged = []
    for members in groups.values():
        group = {k: v for k, v in members[0].items() if k not in ("params", "param_names")}
        group["params"] = list(itertools.chain.from_iterable(m["params"] for m in members))
        if "param_names" in members[0]:
            group["param_names"] = list(
                itertools.chain.from_iterable(m.get("param_names", []) for m in members)
            )
        merged.append(group)
    return merged


_LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")


def _build_base_schedule(cfg: CfgNode) -> ParamScheduler:
    """Return the multiplier schedule named by SOLVER.LR_SCHEDULER_NAME, before warmup."""
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name == "WarmupMultiStepLR":
        steps = [x for x in solver.STEPS if x <= solver.MAX_ITER]
        if len(steps) != len(solver.STEPS):
            logger.warning(
                "SOLVER.STEPS %s has values larger than SOLVER.MAX_ITER=%d; they are ignored.",
                list(solver.STEPS),
                solver.MAX_ITER,
            )
        return MultiStepParamScheduler(
            values=[solver.GAMMA**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=solver.MAX_ITER,
        )
    if name == "WarmupCosineLR":
        if solver.BASE_LR <= 0:
            raise ValueError(f"SOLVER.BASE_LR must be > 0 for WarmupCosineLR, got {solver.BASE_LR}")
        end_value = solver.BASE_LR_END / solver.BASE_LR
        if not 0.0 <= end_value <= 1.0:
            raise ValueError(
                f"SOLVER.BASE_LR_END must be in [0, SOLVER.BASE_LR={solver.BASE_LR}], "
                f"got {solver.BASE_LR_END}"
            )
        return CosineParamScheduler(1, end_value)
    if name == "WarmupStepWithFixedGammaLR":
        return StepWithFixedGammaParamScheduler(
            base_value=1.0,
            gamma=solver.GAMMA,
            num_decays=solver.NUM_DECAYS,
            num_updates=solver.MAX_ITER,
        )
    raise ValueError(
        f"SOLVER.LR_SCHEDULER_NAME must be one of {list(_LR_SCHEDULERS)}, got {name!r}"
    )


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """Build the learning-rate scheduler named by SOLVER.LR_SCHEDULER_NAME.

    The schedule ("WarmupMultiStepLR", "WarmupCosineLR" or "WarmupStepWithFixedGammaLR")
    is preceded by a warmup of min(WARMUP_ITERS / MAX_ITER, 1) of training (WARMUP_FACTOR,
    WARMUP_METHOD, RESCALE_INTERVAL) and applied to `optimizer` by an `LRMultiplier`.
    """
    if cfg.SOLVER.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be > 0, got {cfg.SOLVER.MAX_ITER}")
    sched = WarmupParamScheduler(
        _build_base_schedule(cfg),
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
        cfg.SOLVER.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
