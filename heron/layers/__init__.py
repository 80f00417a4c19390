"""Neural-network layers and ops used by Heron's models, with Detectron2's names.

Everything is PyTorch or torchvision: no compiled code of Heron's own.
"""

from heron.layers.aspp import ASPP
from heron.layers.batch_norm import (
    CycleBatchNormList,
    FrozenBatchNorm2d,
    LayerNorm,
    NaiveSyncBatchNorm,
    get_norm,
)
from heron.layers.blocks import CNNBlockBase, DepthwiseSeparableConv2d
from heron.layers.deform_conv import DeformConv, ModulatedDeformConv
from heron.layers.losses import (
    ciou_loss,
    diou_loss,
    giou_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_jit,
    sigmoid_focal_loss_star,
    smooth_l1_loss,
)
from heron.layers.mask_ops import paste_mask_in_image_old, paste_masks_in_image
from heron.layers.nms import batched_nms, batched_nms_rotated, nms, nms_rotated
from heron.layers.roi_align import ROIAlign, ROIPool, roi_align
from heron.layers.roi_align_rotated import ROIAlignRotated, roi_align_rotated
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    cross_entropy,
    empty_input_loss_func_wrapper,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)

# Detectron2 exports the rotated IoU from layers; it lives in structures here because
# structures may not import layers.
from heron.structures.rotated_boxes import pairwise_iou_rotated

__all__ = [
    "ASPP",
    "BatchNorm2d",
    "CNNBlockBase",
    "Conv2d",
    "ConvTranspose2d",
    "CycleBatchNormList",
    "DeformConv",
    "DepthwiseSeparableConv2d",
    "FrozenBatchNorm2d",
    "LayerNorm",
    "Linear",
    "ModulatedDeformConv",
    "NaiveSyncBatchNorm",
    "ROIAlign",
    "ROIAlignRotated",
    "ROIPool",
    "ShapeSpec",
    "batched_nms",
    "batched_nms_rotated",
    "cat",
    "ciou_loss",
    "cross_entropy",
    "diou_loss",
    "empty_input_loss_func_wrapper",
    "get_norm",
    "giou_loss",
    "interpolate",
    "move_device_like",
    "nms",
    "nms_rotated",
    "nonzero_tuple",
    "pairwise_iou_rotated",
    "paste_mask_in_image_old",
    "paste_masks_in_image",
    "roi_align",
    "roi_align_rotated",
    "shapes_to_tensor",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_jit",
    "sigmoid_focal_loss_star",
    "smooth_l1_loss",
]
