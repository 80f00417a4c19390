"""Mask R-CNN with a ResNet-50-FPN backbone (Detectron2's R50-FPN model, 80 COCO classes)."""

from heron.config import LazyCall as L
from heron.layers import ShapeSpec
from heron.modeling.anchor_generator import DefaultAnchorGenerator
from heron.modeling.backbone import FPN, BasicStem, ResNet
from heron.modeling.backbone.fpn import LastLevelMaxPool
from heron.modeling.box_regression import Box2BoxTransform
from heron.modeling.matcher import Matcher
from heron.modeling.meta_arch import GeneralizedRCNN
from heron.modeling.poolers import ROIPooler
from heron.modeling.proposal_generator import RPN, StandardRPNHead
from heron.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)

# FPN levels p2..p5 come from res2..res5 (strides 4..32); p6 is a max-pool of p5 (stride 64).
_POOLER_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)

model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(
                depth=50,
                stride_in_1x1=True,  # MSRA weights stride in the 1x1 conv
                norm="FrozenBN",
            ),
            out_features=["res2", "res3", "res4", "res5"],
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        # one size per level, three aspect ratios: 3 anchors per location
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),  # (training, testing), per level
        post_nms_topk=(1000, 1000),  # (training, testing), per image
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7,
            scales=_POOLER_SCALES,
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        # "2fc" box head on 7x7 pooled features
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
        mask_in_features=["p2", "p3", "p4", "p5"],
        mask_pooler=L(ROIPooler)(
            output_size=14,
            scales=_POOLER_SCALES,
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        # four 3x3 convs, then a 2x deconv (its width is the last conv_dims entry)
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=256, width=14, height=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],
        ),
    ),
    # BGR inputs, mean-subtracted only (the MSRA weights absorbed the std)
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
