"""`PROPOSAL_GENERATOR_REGISTRY` and `build_proposal_generator`."""

from __future__ import annotations

from torch import nn

from heron.config.config import CfgNode
from heron.layers.shape_spec import ShapeSpec
from heron.utils.registry import Registry

__all__ = ["PROPOSAL_GENERATOR_REGISTRY", "build_proposal_generator"]

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
Registry for proposal generators, called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``.
"""


def build_proposal_generator(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module | None:
    """The proposal generator named by ``cfg.MODEL.PROPOSAL_GENERATOR.NAME``.

    "PrecomputedProposals" returns None: proposals then come with the inputs.
    """
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
