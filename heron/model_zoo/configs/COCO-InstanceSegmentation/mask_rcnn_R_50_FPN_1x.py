"""Mask R-CNN R50-FPN, 1x schedule, as a lazy config."""

from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
