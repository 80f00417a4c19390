"""Mask R-CNN on RegNetY-4GF (the "dds" variant of "Designing Network Design Spaces",
https://arxiv.org/abs/2003.13678) with FPN, LSJ recipe, 100 epochs."""

from heron.config import LazyCall as L
from heron.modeling.backbone import RegNet
from heron.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

# the config's keys (also marks the re-exported imports as used)
__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# Same widths as Detectron2's COCO-InstanceSegmentation/mask_rcnn_regnety_4gf_dds_fpn_1x.py: stage
# widths follow w_0 + w_a * j (quantized by w_m) for blocks j = 0 .. depth-1.
model.backbone.bottom_up = L(RegNet)(
    stem_class=SimpleStem,
    stem_width=32,
    block_class=ResBottleneckBlock,
    depth=22,
    w_a=31.41,
    w_0=96,
    w_m=2.24,
    group_width=64,
    se_ratio=0.25,  # squeeze-and-excitation (the "Y" in RegNetY)
    norm="SyncBN",
    out_features=["s1", "s2", "s3", "s4"],
)
# pycls RegNets take BGR inputs normalized by the ImageNet std as well
model.pixel_std = [57.375, 57.120, 58.395]

# grouped convs of many shapes: cudnn's autotuner pays off
train.cudnn_benchmark = True
