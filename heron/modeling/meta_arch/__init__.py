"""Meta-architectures: whole models built from a config."""

from heron.modeling.meta_arch.build import META_ARCH_REGISTRY, build_model
from heron.modeling.meta_arch.rcnn import GeneralizedRCNN, ProposalNetwork

__all__ = ["META_ARCH_REGISTRY", "GeneralizedRCNN", "ProposalNetwork", "build_model"]
