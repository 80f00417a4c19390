"""`BACKBONE_REGISTRY` and `build_backbone`."""

from __future__ import annotations

from heron.layers.shape_spec import ShapeSpec
from heron.modeling.backbone.backbone import Backbone
from heron.utils.registry import Registry

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Registry for backbones. A registered object is called as ``obj(cfg, input_shape)`` and
must return a `Backbone`.
"""


def build_backbone(cfg, input_shape: ShapeSpec | None = None) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME``.

    Args:
        cfg: a config with Detectron2's keys.
        input_shape: shape of the input image tensor; default: one channel per entry
            of ``cfg.MODEL.PIXEL_MEAN``.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"MODEL.BACKBONE.NAME={name!r} built a {type(backbone).__name__}, "
            "which is not a heron.modeling.Backbone"
        )
    return backbone
