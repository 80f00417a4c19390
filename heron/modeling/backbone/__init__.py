"""Backbones: ResNet/ResNeXt, RegNet, ViT (+ SimpleFeaturePyramid), FPN, and the registry
that builds them from a config."""

from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import BACKBONE_REGISTRY, build_backbone
from heron.modeling.backbone.fpn import (
    FPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from heron.modeling.backbone.regnet import RegNet
from heron.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
    build_resnet_backbone,
    make_stage,
)
from heron.modeling.backbone.vit import SimpleFeaturePyramid, ViT, get_vit_lr_decay_rate

__all__ = [
    "BACKBONE_REGISTRY",
    "FPN",
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "RegNet",
    "ResNet",
    "SimpleFeaturePyramid",
    "ViT",
    "build_backbone",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "get_vit_lr_decay_rate",
    "make_stage",
]
