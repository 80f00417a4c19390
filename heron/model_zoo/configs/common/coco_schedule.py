"""The "Nx" multi-step LR schedules of the Detectron2 model zoo, as lazy configs.

One "1x" is 90k iterations at 16 images per iteration (1.44M images, about 12 COCO epochs).
The LR drops tenfold twice: at 6/9 and 8/9 of 1x for schedules up to 2x, and 60k and 20k
iterations before the end for longer ones ("Rethinking ImageNet Pre-training", Sec. 4).
"""

from omegaconf import DictConfig

from heron.config import LazyCall as L
from heron.solver import MultiStepParamScheduler, WarmupParamScheduler


def default_X_scheduler(num_X: float) -> DictConfig:
    """Lazy config of the LR multiplier for a schedule of `num_X` times 1x (a positive number).

    The multi-step scheduler is defined on [0, 1) of training, so milestones only matter
    relative to ``num_updates``; the warmup spans the first 1000 iterations (at batch 16).
    """
    total_steps_16bs = num_X * 90000
    if num_X <= 2:
        # same fractions as milestones [6, 8] over 9 updates
        scheduler = L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            milestones=[60000, 80000],
            num_updates=90000,
        )
    else:
        scheduler = L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            milestones=[total_steps_16bs - 60000, total_steps_16bs - 20000],
            num_updates=total_steps_16bs,
        )
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=1000 / total_steps_16bs,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_1x = default_X_scheduler(1)
lr_multiplier_2x = default_X_scheduler(2)
lr_multiplier_3x = default_X_scheduler(3)
lr_multiplier_6x = default_X_scheduler(6)
lr_multiplier_9x = default_X_scheduler(9)
