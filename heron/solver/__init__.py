"""Optimizers and learning-rate schedules, with Detectron2's names.

`build_optimizer` and `build_lr_scheduler` read `cfg.SOLVER`; `heron.solver.param_scheduler`
holds the progress-to-value schedules (fvcore's names) that `LRMultiplier` applies.
"""

from heron.solver.build import (
    GradientClipType,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from heron.solver.lr_scheduler import (
    LRMultiplier,
    LRScheduler,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)
from heron.solver.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    ExponentialParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
    StepParamScheduler,
    StepWithFixedGammaParamScheduler,
)

__all__ = [
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "ExponentialParamScheduler",
    "GradientClipType",
    "LRMultiplier",
    "LRScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "PolynomialDecayParamScheduler",
    "StepParamScheduler",
    "StepWithFixedGammaParamScheduler",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]
