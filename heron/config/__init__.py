"""Configs: Detectron2's yacs-style `CfgNode` with its full default key set, and the
`configurable` decorator that lets modules be built from a config or from arguments."""

from heron.config.compat import downgrade_config, upgrade_config
from heron.config.config import CfgNode, configurable, get_cfg, global_cfg, set_global_cfg

__all__ = [
    "CfgNode",
    "configurable",
    "downgrade_config",
    "get_cfg",
    "global_cfg",
    "set_global_cfg",
    "upgrade_config",
]
