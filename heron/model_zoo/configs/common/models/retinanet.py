"""RetinaNet on R50-FPN (P3-P7), 80 COCO classes."""

from heron.config import LazyCall as L
from heron.layers import ShapeSpec
from heron.modeling.anchor_generator import DefaultAnchorGenerator
from heron.modeling.backbone import FPN, BasicStem, ResNet
from heron.modeling.backbone.fpn import LastLevelP6P7
from heron.modeling.box_regression import Box2BoxTransform
from heron.modeling.matcher import Matcher
from heron.modeling.meta_arch import RetinaNet
from heron.modeling.meta_arch.retinanet import RetinaNetHead

model = L(RetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(
                depth=50,
                stride_in_1x1=True,
                norm="FrozenBN",
            ),
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        # P6 and P7 are computed from C5 (2048 channels)
        top_block=L(LastLevelP6P7)(in_channels=2048, out_channels="${..out_channels}"),
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,  # one entry per level p3..p7
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
        num_anchors=9,
    ),
    # three octave scales (2^0, 2^(1/3), 2^(2/3)) x three aspect ratios per location
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    num_classes=80,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
