"""Caffe2-style weight initialisers used by Detectron2's models (fvcore's names)."""

from __future__ import annotations

from torch import nn

__all__ = ["c2_msra_fill", "c2_xavier_fill"]


def c2_msra_fill(module: nn.Module) -> None:
    """He (MSRA) normal init with fan_out, as Caffe2's MSRAFill; zero bias.

    Used for convolutions followed by ReLU (ResNet blocks).
    """
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill: uniform with bound sqrt(3 / fan_in); zero bias.

    ``kaiming_uniform_`` with ``a=1`` gives exactly that bound (gain 1).
    """
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)
