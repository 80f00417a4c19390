"""Mask R-CNN R101-FPN, LSJ recipe, 400 epochs (4 times the 100-epoch schedule)."""

from .mask_rcnn_R_101_FPN_100ep_LSJ import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

# the config's keys (also marks the re-exported imports as used)
__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

train.max_iter *= 4  # 100 epochs -> 400

# the LR drops keep their place relative to the length of training
lr_multiplier.scheduler.milestones = [
    milestone * 4 for milestone in lr_multiplier.scheduler.milestones
]
lr_multiplier.scheduler.num_updates = train.max_iter
