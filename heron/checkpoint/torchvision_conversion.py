"""Rename torchvision ResNet weights to Detectron2's ResNet parameter names.

The rules are those of Detectron2's ``tools/convert-torchvision-to-d2.py``:

=========================  ===============================
torchvision                Detectron2
=========================  ===============================
``conv1``                  ``stem.conv1``
``bn1``                    ``stem.conv1.norm``
``layer{K}.{i}.conv{J}``   ``res{K+1}.{i}.conv{J}``
``layer{K}.{i}.bn{J}``     ``res{K+1}.{i}.conv{J}.norm``
``.downsample.0``          ``.shortcut``
``.downsample.1``          ``.shortcut.norm``
=========================  ===============================

The ImageNet classifier (``fc.*``) has no place in a detector and is dropped (the script
keeps it as an unused ``stem.fc.*``). The converted names have no "backbone.bottom_up."
prefix; loading them relies on :func:`align_and_update_state_dicts`'s suffix matching.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["convert_torchvision_resnet", "is_torchvision_resnet"]

logger = logging.getLogger(__name__)


def is_torchvision_resnet(state_dict: Mapping[str, Any]) -> bool:
    """Return whether ``state_dict`` has torchvision ResNet names.

    True when it has the stem (``conv1.weight`` and ``bn1.*``) and a first stage
    (``layer1.*``) at the top level, which Detectron2 names never have.
    """
    keys = state_dict.keys()
    return (
        "conv1.weight" in keys
        and any(k.startswith("bn1.") for k in keys)
        and any(k.startswith("layer1.") for k in keys)
    )


def _convert_key(key: str) -> str:
    if "layer" not in key:
        key = "stem." + key
    for stage in (1, 2, 3, 4):
        key = key.replace(f"layer{stage}", f"res{stage + 1}")
    for conv in (1, 2, 3):
        key = key.replace(f"bn{conv}", f"conv{conv}.norm")
    key = key.replace("downsample.0", "shortcut")
    return key.replace("downsample.1", "shortcut.norm")


def convert_torchvision_resnet(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a torchvision ResNet state_dict to Detectron2 names; values are unchanged.

    Args:
        state_dict: e.g. ``torchvision.models.resnet50().state_dict()``.

    Returns:
        Detectron2 name -> the same tensor object, e.g. ``layer1.0.bn1.weight`` ->
        ``res2.0.conv1.norm.weight``. ``fc.weight`` and ``fc.bias`` are left out.
    """
    converted: dict[str, Any] = {}
    dropped = []
    for key, value in state_dict.items():
        if key.startswith("fc."):
            dropped.append(key)
            continue
        new_key = _convert_key(key)
        logger.debug("%s -> %s", key, new_key)
        converted[new_key] = value
    if dropped:
        logger.info("Dropped the torchvision classifier weights %s (unused by detectors)", dropped)
    return converted
