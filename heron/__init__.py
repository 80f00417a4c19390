"""Heron: detection and segmentation on PyTorch with Detectron2's API.

Heron mirrors Detectron2's module layout, names and semantics (``heron.structures``,
``heron.layers``, ``heron.config``, ...), reads its configs and checkpoints, and has no
compiled code of its own.
"""

__version__ = "0.1.0"
