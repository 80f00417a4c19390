"""Mask R-CNN R101-FPN, LSJ recipe, 100 epochs: the R50 recipe with a deeper ResNet."""

from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

# the config's keys (also marks the re-exported imports as used)
__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.stages.depth = 101
