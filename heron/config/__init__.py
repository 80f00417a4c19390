"""Configs: Detectron2's yacs-style `CfgNode` with its full default key set, the
`configurable` decorator that lets modules be built from a config or from arguments, and
Python ("lazy") configs on omegaconf: `LazyConfig`, `LazyCall`, `instantiate`."""

from heron.config.compat import downgrade_config, upgrade_config
from heron.config.config import CfgNode, configurable, get_cfg, global_cfg, set_global_cfg
from heron.config.instantiate import instantiate
from heron.config.lazy import LazyCall, LazyConfig

__all__ = [
    "CfgNode",
    "LazyCall",
    "LazyConfig",
    "configurable",
    "downgrade_config",
    "get_cfg",
    "global_cfg",
    "instantiate",
    "set_global_cfg",
    "upgrade_config",
]
