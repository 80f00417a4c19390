"""Mask R-CNN R50-FPN trained from scratch for 100 epochs with large-scale jitter (LSJ),
SyncBN and batch 64: Detectron2's "new baselines" recipe (after the TPU detection models
and "Simple Copy-Paste", https://arxiv.org/abs/2012.07177)."""

import heron.data.transforms as T
from heron.config.lazy import LazyCall as L
from heron.layers.batch_norm import NaiveSyncBatchNorm
from heron.solver import MultiStepParamScheduler, WarmupParamScheduler

from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

# from scratch, in mixed precision, with fp16 gradient all-reduce
train["init_checkpoint"] = ""
train["amp"]["enabled"] = True
train["ddp"]["fp16_compression"] = True
model.backbone.bottom_up.freeze_at = 0  # nothing pretrained to freeze

# Synchronized BN in the backbone and FPN.
model.backbone.bottom_up.stem.norm = "SyncBN"
model.backbone.bottom_up.stages.norm = "SyncBN"
model.backbone.norm = "SyncBN"

# The ROI heads can get zero regions on a GPU, which torch.nn.SyncBatchNorm rejects
# (pytorch/pytorch#36530); NaiveSyncBatchNorm with stats_mode="N" weights each GPU by its
# number of regions and accepts empty input.
model.roi_heads.box_head.conv_norm = lambda c: NaiveSyncBatchNorm(c, stats_mode="N")
model.roi_heads.mask_head.conv_norm = lambda c: NaiveSyncBatchNorm(c, stats_mode="N")

# two 3x3 convs in the RPN head (-1: keep the input width), as in the TPU RetinaNet/RPN heads
model.proposal_generator.head.conv_dims = [-1, -1]

# "4conv1fc" box head
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]

# LSJ: rescale the image to 0.1x-2.0x of a 1024x1024 frame, then crop or pad to 1024x1024
# (the TPU models' resize_and_crop_image).
image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.ResizeScale)(
        min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
    L(T.RandomFlip)(horizontal=True),
]
# cropping cuts instances, so their boxes are recomputed from the cropped masks
dataloader.train.mapper.recompute_boxes = True

dataloader.train.total_batch_size = 64

# 100 epochs: 184375 iterations * 64 images / 118000 images per epoch
train["max_iter"] = 184375

# LR x0.1 at about 88.9% and 96.3% of training; a short warmup of 500 iterations
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=500 / train.max_iter,
    warmup_factor=0.067,
)

optimizer.lr = 0.1
optimizer.weight_decay = 4e-5
