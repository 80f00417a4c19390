"""Mask R-CNN on a plain ViT-B/16 backbone with a simple feature pyramid (ViTDet)."""

from functools import partial

from torch import nn

from heron.config import LazyCall as L
from heron.modeling import SimpleFeaturePyramid, ViT
from heron.modeling.backbone.fpn import LastLevelMaxPool

from ..data.constants import constants
from .mask_rcnn_fpn import model

# ViT weights expect RGB inputs normalized by the ImageNet mean and std
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

# ViT-B: width, blocks, heads, stochastic-depth rate
embed_dim, depth, num_heads, dp = 768, 12, 12, 0.1

model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViT)(
        img_size=1024,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=dp,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        # windowed attention everywhere except blocks 2, 5, 8 and 11 (global)
        window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
        residual_block_indexes=[],
        use_rel_pos=True,
        out_feature="last_feat",
    ),
    in_feature="${.net.out_feature}",
    out_channels=256,
    # stride-16 ViT features -> strides 4, 8, 16, 32 (+ 64 from the max pool)
    scale_factors=(4.0, 2.0, 1.0, 0.5),
    top_block=L(LastLevelMaxPool)(),
    norm="LN",
    square_pad=1024,
)

model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = "LN"

# two 3x3 convs in the RPN head (-1: keep the input width)
model.proposal_generator.head.conv_dims = [-1, -1]

# "4conv1fc" box head
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
