"""`META_ARCH_REGISTRY` and `build_model`."""

from __future__ import annotations

import logging

import torch
from torch import nn

from heron.config.config import CfgNode
from heron.utils.registry import Registry

__all__ = ["META_ARCH_REGISTRY", "build_model"]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Registry for meta-architectures (whole models), called as ``obj(cfg)``.
"""


def build_model(cfg: CfgNode) -> nn.Module:
    """The model named by ``cfg.MODEL.META_ARCHITECTURE``, on ``cfg.MODEL.DEVICE``.

    Weights are not loaded: use `DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)`.
    """
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    logging.getLogger(__name__).debug("Model:\n%s", model)
    return model
