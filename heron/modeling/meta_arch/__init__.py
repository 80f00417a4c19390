"""Meta-architectures: whole models built from a config."""

from heron.modeling.meta_arch.build import META_ARCH_REGISTRY, build_model
from heron.modeling.meta_arch.dense_detector import DenseDetector
from heron.modeling.meta_arch.fcos import FCOS, FCOSHead, add_fcos_config
from heron.modeling.meta_arch.panoptic_fpn import (
    PanopticFPN,
    combine_semantic_and_instance_outputs,
)
from heron.modeling.meta_arch.rcnn import GeneralizedRCNN, ProposalNetwork
from heron.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from heron.modeling.meta_arch.semantic_seg import (
    SEM_SEG_HEADS_REGISTRY,
    SemanticSegmentor,
    SemSegFPNHead,
    build_sem_seg_head,
)

__all__ = [
    "FCOS",
    "META_ARCH_REGISTRY",
    "SEM_SEG_HEADS_REGISTRY",
    "DenseDetector",
    "FCOSHead",
    "GeneralizedRCNN",
    "PanopticFPN",
    "ProposalNetwork",
    "RetinaNet",
    "RetinaNetHead",
    "SemSegFPNHead",
    "SemanticSegmentor",
    "add_fcos_config",
    "build_model",
    "build_sem_seg_head",
    "combine_semantic_and_instance_outputs",
]
