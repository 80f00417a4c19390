"""ROI heads and their box, mask and keypoint heads."""

from heron.modeling.roi_heads.box_head import (
    ROI_BOX_HEAD_REGISTRY,
    FastRCNNConvFCHead,
    build_box_head,
)
from heron.modeling.roi_heads.cascade_rcnn import CascadeROIHeads
from heron.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from heron.modeling.roi_heads.keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    BaseKeypointRCNNHead,
    KRCNNConvDeconvUpsampleHead,
    build_keypoint_head,
)
from heron.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    MaskRCNNConvUpsampleHead,
    build_mask_head,
)
from heron.modeling.roi_heads.roi_heads import (
    ROI_HEADS_REGISTRY,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    build_roi_heads,
    select_foreground_proposals,
)
from heron.modeling.roi_heads.rotated_fast_rcnn import (
    RotatedFastRCNNOutputLayers,
    RROIHeads,
    fast_rcnn_inference_rotated,
    fast_rcnn_inference_single_image_rotated,
)

__all__ = [
    "ROI_BOX_HEAD_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "ROI_MASK_HEAD_REGISTRY",
    "BaseKeypointRCNNHead",
    "BaseMaskRCNNHead",
    "CascadeROIHeads",
    "FastRCNNConvFCHead",
    "FastRCNNOutputLayers",
    "KRCNNConvDeconvUpsampleHead",
    "MaskRCNNConvUpsampleHead",
    "ROIHeads",
    "RROIHeads",
    "Res5ROIHeads",
    "RotatedFastRCNNOutputLayers",
    "StandardROIHeads",
    "build_box_head",
    "build_keypoint_head",
    "build_mask_head",
    "build_roi_heads",
    "fast_rcnn_inference_rotated",
    "fast_rcnn_inference_single_image_rotated",
    "select_foreground_proposals",
]
