"""Proposal generators (RPN) and their registry."""

from heron.modeling.proposal_generator.build import (
    PROPOSAL_GENERATOR_REGISTRY,
    build_proposal_generator,
)
from heron.modeling.proposal_generator.rpn import (
    RPN,
    RPN_HEAD_REGISTRY,
    StandardRPNHead,
    build_rpn_head,
)

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "RPN",
    "RPN_HEAD_REGISTRY",
    "StandardRPNHead",
    "build_proposal_generator",
    "build_rpn_head",
]
