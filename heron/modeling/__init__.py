"""Models: backbones, proposal generators, ROI heads and meta-architectures.

Importing this package registers every built-in component in its registry.
"""

from heron.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    DefaultAnchorGenerator,
    RotatedAnchorGenerator,
    build_anchor_generator,
)
from heron.modeling.backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    ResNet,
    build_backbone,
    build_resnet_backbone,
    make_stage,
)
from heron.modeling.box_regression import (
    Box2BoxTransform,
    Box2BoxTransformLinear,
    Box2BoxTransformRotated,
)
from heron.modeling.matcher import Matcher
from heron.modeling.meta_arch import (
    META_ARCH_REGISTRY,
    GeneralizedRCNN,
    ProposalNetwork,
    build_model,
)
from heron.modeling.poolers import ROIPooler
from heron.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from heron.modeling.proposal_generator import (
    PROPOSAL_GENERATOR_REGISTRY,
    RPN,
    RPN_HEAD_REGISTRY,
    StandardRPNHead,
    build_proposal_generator,
    build_rpn_head,
)
from heron.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    BaseKeypointRCNNHead,
    BaseMaskRCNNHead,
    CascadeROIHeads,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    KRCNNConvDeconvUpsampleHead,
    MaskRCNNConvUpsampleHead,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
    build_roi_heads,
)
from heron.modeling.sampling import subsample_labels

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BACKBONE_REGISTRY",
    "FPN",
    "META_ARCH_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "ROI_BOX_HEAD_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "ROI_MASK_HEAD_REGISTRY",
    "RPN",
    "RPN_HEAD_REGISTRY",
    "Backbone",
    "BaseKeypointRCNNHead",
    "BaseMaskRCNNHead",
    "Box2BoxTransform",
    "Box2BoxTransformLinear",
    "Box2BoxTransformRotated",
    "CascadeROIHeads",
    "DefaultAnchorGenerator",
    "FastRCNNConvFCHead",
    "FastRCNNOutputLayers",
    "GeneralizedRCNN",
    "KRCNNConvDeconvUpsampleHead",
    "MaskRCNNConvUpsampleHead",
    "Matcher",
    "ProposalNetwork",
    "ROIHeads",
    "ROIPooler",
    "Res5ROIHeads",
    "ResNet",
    "RotatedAnchorGenerator",
    "StandardROIHeads",
    "StandardRPNHead",
    "build_anchor_generator",
    "build_backbone",
    "build_box_head",
    "build_keypoint_head",
    "build_mask_head",
    "build_model",
    "build_proposal_generator",
    "build_resnet_backbone",
    "build_roi_heads",
    "build_rpn_head",
    "detector_postprocess",
    "make_stage",
    "sem_seg_postprocess",
    "subsample_labels",
]
