"""Config versions: reading Detectron2's pre-release (VERSION 0 and 1) YAML configs.

The current config is VERSION 2. An older partial config is merged by first converting the
full current config down to the old version (renaming keys back), merging the file there,
then converting the result up again. A version step ``k`` is described by ``_STEPS[k]``: a
list of (old dotted key, new dotted key) renames, plus special cases for the anchor keys of
VERSION 2, which moved from ``MODEL.RPN``/``MODEL.RETINANET`` to ``MODEL.ANCHOR_GENERATOR``.
"""

from __future__ import annotations

import logging

from heron.config.config import CfgNode

__all__ = ["downgrade_config", "guess_version", "upgrade_config"]

logger = logging.getLogger(__name__)

# Renames made by each version step (old name, new name).
_RENAMES: dict[int, list[tuple[str, str]]] = {
    1: [("MODEL.RPN_HEAD.NAME", "MODEL.RPN.HEAD_NAME")],
    2: [
        ("MODEL.WEIGHT", "MODEL.WEIGHTS"),
        ("MODEL.PANOPTIC_FPN.SEMANTIC_LOSS_SCALE", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT"),
        ("MODEL.PANOPTIC_FPN.RPN_LOSS_SCALE", "MODEL.RPN.LOSS_WEIGHT"),
        ("MODEL.PANOPTIC_FPN.INSTANCE_LOSS_SCALE", "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT"),
        ("MODEL.PANOPTIC_FPN.COMBINE_ON", "MODEL.PANOPTIC_FPN.COMBINE.ENABLED"),
        (
            "MODEL.PANOPTIC_FPN.COMBINE_OVERLAP_THRESHOLD",
            "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH",
        ),
        (
            "MODEL.PANOPTIC_FPN.COMBINE_STUFF_AREA_LIMIT",
            "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        ),
        (
            "MODEL.PANOPTIC_FPN.COMBINE_INSTANCES_CONFIDENCE_THRESHOLD",
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        ),
        ("MODEL.ROI_HEADS.SCORE_THRESH", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
        ("MODEL.ROI_HEADS.NMS", "MODEL.ROI_HEADS.NMS_THRESH_TEST"),
        ("MODEL.RETINANET.INFERENCE_SCORE_THRESHOLD", "MODEL.RETINANET.SCORE_THRESH_TEST"),
        ("MODEL.RETINANET.INFERENCE_TOPK_CANDIDATES", "MODEL.RETINANET.TOPK_CANDIDATES_TEST"),
        ("MODEL.RETINANET.INFERENCE_NMS_THRESHOLD", "MODEL.RETINANET.NMS_THRESH_TEST"),
        ("TEST.DETECTIONS_PER_IMG", "TEST.DETECTIONS_PER_IMAGE"),
        ("TEST.AUG_ON", "TEST.AUG.ENABLED"),
        ("TEST.AUG_MIN_SIZES", "TEST.AUG.MIN_SIZES"),
        ("TEST.AUG_MAX_SIZE", "TEST.AUG.MAX_SIZE"),
        ("TEST.AUG_FLIP", "TEST.AUG.FLIP"),
    ],
}


def _latest_version() -> int:
    from heron.config.defaults import _C

    return _C.VERSION


def upgrade_config(cfg: CfgNode, to_version: int | None = None) -> CfgNode:
    """Return a copy of a full config converted up to ``to_version`` (default: latest).

    Raises:
        ValueError: if ``cfg.VERSION`` is newer than ``to_version``.
    """
    cfg = cfg.clone()
    to_version = _latest_version() if to_version is None else to_version
    if to_version < cfg.VERSION:
        raise ValueError(f"Cannot upgrade a VERSION {cfg.VERSION} config to {to_version}")
    for version in range(cfg.VERSION + 1, to_version + 1):
        for old, new in _RENAMES[version]:
            _rename(cfg, old, new)
        if version == 2:
            _upgrade_anchors_to_v2(cfg)
        cfg.VERSION = version
    return cfg


def downgrade_config(cfg: CfgNode, to_version: int) -> CfgNode:
    """Return a copy of a full config converted down to ``to_version``.

    Only meant to recover an old version's defaults so that an old partial config can be
    merged into them; features newer than ``to_version`` are not representable there.

    Raises:
        ValueError: if ``cfg.VERSION`` is older than ``to_version``.
    """
    cfg = cfg.clone()
    if to_version > cfg.VERSION:
        raise ValueError(f"Cannot downgrade a VERSION {cfg.VERSION} config to {to_version}")
    for version in range(cfg.VERSION, to_version, -1):
        for old, new in reversed(_RENAMES[version]):
            _rename(cfg, new, old)
        if version == 2:
            _downgrade_anchors_from_v2(cfg)
        cfg.VERSION = version - 1
    return cfg


def guess_version(cfg: CfgNode, filename: str) -> int:
    """Guess the VERSION of a partial config that does not say: 1 if it has keys that only
    VERSION 1 had (``MODEL.WEIGHT``, ``TEST.AUG_ON``), else the latest."""
    if _has(cfg, "MODEL.WEIGHT") or _has(cfg, "TEST.AUG_ON"):
        logger.warning("Config '%s' has no VERSION and looks like VERSION 1", filename)
        return 1
    return _latest_version()


def _has(cfg: CfgNode, name: str) -> bool:
    node = cfg
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _rename(cfg: CfgNode, old: str, new: str) -> None:
    """Move the value at dotted ``old`` to dotted ``new``; drop nodes left empty."""
    *old_parents, old_leaf = old.split(".")
    node = cfg
    trail = []
    for part in old_parents:
        trail.append((node, part))
        node = node[part]
    value = node.pop(old_leaf)
    # Remove parents emptied by the move (a renamed group disappears entirely).
    while trail and len(node) == 0:
        parent, part = trail.pop()
        del parent[part]
        node = parent
    *new_parents, new_leaf = new.split(".")
    node = cfg
    for part in new_parents:
        if part not in node:
            node[part] = CfgNode()
        node = node[part]
    node[new_leaf] = value


def _upgrade_anchors_to_v2(cfg: CfgNode) -> None:
    # VERSION 1 kept anchor sizes in both the RPN and RetinaNet sections; the
    # meta-architecture decides which one becomes MODEL.ANCHOR_GENERATOR.
    keep, drop = "RPN", "RETINANET"
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        keep, drop = drop, keep
    _rename(cfg, f"MODEL.{keep}.ANCHOR_ASPECT_RATIOS", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
    _rename(cfg, f"MODEL.{keep}.ANCHOR_SIZES", "MODEL.ANCHOR_GENERATOR.SIZES")
    del cfg.MODEL[drop]["ANCHOR_SIZES"]
    del cfg.MODEL[drop]["ANCHOR_ASPECT_RATIOS"]
    del cfg.MODEL.RETINANET["ANCHOR_STRIDES"]


def _downgrade_anchors_from_v2(cfg: CfgNode) -> None:
    _rename(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "MODEL.RPN.ANCHOR_ASPECT_RATIOS")
    _rename(cfg, "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.RPN.ANCHOR_SIZES")
    cfg.MODEL.RETINANET.ANCHOR_ASPECT_RATIOS = cfg.MODEL.RPN.ANCHOR_ASPECT_RATIOS
    cfg.MODEL.RETINANET.ANCHOR_SIZES = cfg.MODEL.RPN.ANCHOR_SIZES
    cfg.MODEL.RETINANET.ANCHOR_STRIDES = []  # never read by any version
