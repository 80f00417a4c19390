"""RetinaNet R50-FPN, 1x schedule, as a lazy config (boxes only, LR 0.01)."""

from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.train import train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

dataloader.train.mapper.use_instance_mask = False
model.backbone.bottom_up.freeze_at = 2
optimizer.lr = 0.01
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
