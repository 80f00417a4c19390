"""Mask R-CNN with a RegNetX-4GF backbone (pycls DDS baseline) in the FPN, 1x schedule."""

from heron.config import LazyCall as L
from heron.modeling.backbone import RegNet
from heron.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# RegNetX-4.0GF as pycls's DDS baseline defines it
model.backbone.bottom_up = L(RegNet)(
    stem_class=SimpleStem,
    stem_width=32,
    block_class=ResBottleneckBlock,
    depth=23,
    w_a=38.65,
    w_0=96,
    w_m=2.43,
    group_width=40,
    freeze_at=2,
    norm="FrozenBN",
    out_features=["s1", "s2", "s3", "s4"],
)
model.pixel_std = [57.375, 57.120, 58.395]  # pycls weights expect torchvision's std

optimizer.weight_decay = 5e-5
train.init_checkpoint = (
    "https://dl.fbaipublicfiles.com/pycls/dds_baselines/160906383/RegNetX-4.0GF_dds_8gpu.pyth"
)
train.cudnn_benchmark = True  # RegNets' grouped convolutions gain from it
