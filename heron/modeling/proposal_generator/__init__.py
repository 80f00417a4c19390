"""Proposal generators (RPN, rotated RRPN) and their registry."""

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
from heron.modeling.proposal_generator.rrpn import RRPN, find_top_rrpn_proposals

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "RPN",
    "RPN_HEAD_REGISTRY",
    "RRPN",
    "StandardRPNHead",
    "build_proposal_generator",
    "build_rpn_head",
    "find_top_rrpn_proposals",
]
