"""Panoptic FPN on R50-FPN: Mask R-CNN plus a semantic head for the 54 COCO stuff classes."""

from heron.config import LazyCall as L
from heron.layers import ShapeSpec
from heron.modeling import PanopticFPN
from heron.modeling.meta_arch.semantic_seg import SemSegFPNHead

from .mask_rcnn_fpn import model

model._target_ = PanopticFPN
model.sem_seg_head = L(SemSegFPNHead)(
    input_shape={
        name: L(ShapeSpec)(stride=stride, channels="${....backbone.out_channels}")
        for name, stride in zip(["p2", "p3", "p4", "p5"], [4, 8, 16, 32])
    },
    ignore_value=255,
    num_classes=54,  # 53 COCO stuff classes + one "things" class
    conv_dims=128,
    common_stride=4,
    loss_weight=0.5,
    norm="GN",
)
