"""Build objects from lazy configs: ``instantiate`` and ``dump_dataclass``.

A lazy config describes a call as a mapping whose ``_target_`` names the callable (the object
itself, a dotted import path, or another lazy config that builds the callable) and whose other
keys are the keyword arguments. ``instantiate`` makes the calls bottom-up, as Detectron2's
``detectron2.config.instantiate`` does.
"""

from __future__ import annotations

import dataclasses
from collections import abc
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from heron.utils.registry import _convert_target_to_string, locate

__all__ = ["dump_dataclass", "instantiate"]


def dump_dataclass(obj: Any) -> dict[str, Any]:
    """Turn a dataclass instance into a lazy-config dict that rebuilds it.

    Nested dataclasses, also inside lists and tuples, become nested dicts; tuples become lists.

    Args:
        obj: a dataclass instance (not a dataclass type).

    Returns:
        ``{"_target_": "<dotted path of type(obj)>", field: value, ...}``.

    Raises:
        TypeError: if ``obj`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(
            f"dump_dataclass(obj) expects a dataclass instance, got {type(obj).__name__}: {obj!r}"
        )
    ret: dict[str, Any] = {"_target_": _convert_target_to_string(type(obj))}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dump_dataclass(value)
        elif isinstance(value, (list, tuple)):
            value = [
                dump_dataclass(x) if dataclasses.is_dataclass(x) and not isinstance(x, type) else x
                for x in value
            ]
        ret[field.name] = value
    return ret


def instantiate(cfg: Any) -> Any:
    """Recursively build the objects a lazy config describes.

    - A mapping (dict or DictConfig) with ``_target_`` is a call: its values are instantiated
      first, then ``target(**kwargs)`` is returned. A string target is imported with
      :func:`heron.utils.registry.locate`.
    - A DictConfig backed by a dataclass (omegaconf structured config) becomes that dataclass.
    - A list, tuple or ListConfig has each element instantiated; a ListConfig comes back as a
      ListConfig (as in Detectron2), the others keep their type.
    - A mapping without ``_target_`` has its values instantiated and comes back as a
      DictConfig (that may hold objects) or a dict.
    - A container with no ``_target_`` anywhere inside is returned itself, not a copy.
    - Anything else is returned as is.

    Args:
        cfg: the config, typically a node of what :meth:`LazyConfig.load` returned.

    Returns:
        The built object(s).

    Raises:
        ImportError: if a string ``_target_`` cannot be imported; names the target and the
            config key.
        TypeError: if a target is not callable or rejects its arguments; names the target and
            the config key.
    """
    return _instantiate(cfg, _node_path(cfg))


def _instantiate(cfg: Any, path: str) -> Any:
    if isinstance(cfg, (list, tuple)) or (OmegaConf.is_config(cfg) and _is_sequence(cfg)):
        # ListConfig, plain lists and tuples, and omegaconf's tuple nodes where it has them
        originals = list(cfg)
        items = [_instantiate(x, f"{path}[{i}]") for i, x in enumerate(originals)]
        if all(new is old for new, old in zip(items, originals)):
            return cfg
        if isinstance(cfg, ListConfig):
            return ListConfig(items, flags={"allow_objects": True})
        return items if isinstance(cfg, list) else tuple(items)
    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(cfg)):
        return OmegaConf.to_object(cfg)
    if isinstance(cfg, abc.Mapping):
        if "_target_" in cfg:
            return _call(cfg, path)
        return _instantiate_children(cfg, path)
    return cfg


def _call(cfg: abc.Mapping, path: str) -> Any:
    """Instantiate the arguments of a ``_target_`` mapping and call the target."""
    kwargs = {k: _instantiate(v, _join(path, k)) for k, v in cfg.items()}
    target = kwargs.pop("_target_")
    where = f"config key {path!r}" if path else "the config root"
    if isinstance(target, str):
        name = target
        try:
            target = locate(name)
        except ImportError as e:
            raise ImportError(f"Cannot instantiate {where}: _target_ {name!r}: {e}") from e
    else:
        name = _describe(target)
    if not callable(target):
        raise TypeError(
            f"Cannot instantiate {where}: _target_ {name!r} is a {type(target).__name__}, "
            f"not a callable"
        )
    try:
        return target(**kwargs)
    except TypeError as e:
        raise TypeError(f"Error instantiating {name} at {where}: {e}") from e


def _instantiate_children(cfg: abc.Mapping, path: str) -> Any:
    """Instantiate the values of a mapping without ``_target_``; keep it if nothing changed."""
    built = {}
    changed = False
    for k, v in cfg.items():
        built[k] = _instantiate(v, _join(path, k))
        changed = changed or built[k] is not v
    if not changed:
        return cfg
    if isinstance(cfg, DictConfig):
        return DictConfig(built, flags={"allow_objects": True})
    return built


def _is_sequence(obj: Any) -> bool:
    return isinstance(obj, abc.Sequence) and not isinstance(obj, (str, bytes))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(target: Any) -> str:
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return repr(target)


def _node_path(cfg: Any) -> str:
    """The key path of an omegaconf node inside its root ("model.layers[1]"), "" for a root.

    Lets an error in ``instantiate(cfg.model)`` name ``model.backbone`` rather than
    ``backbone``. Uses omegaconf's parent links; any surprise there gives "".
    """
    if not OmegaConf.is_config(cfg):
        return ""
    parts: list[str] = []
    try:
        node = cfg
        parent = node._get_parent()
        while parent is not None:
            key = node._key()
            parts.append(f"[{key}]" if _is_sequence(parent) else f".{key}")
            node, parent = parent, parent._get_parent()
    except Exception:  # private omegaconf API: a message nicety, never a failure
        return ""
    return "".join(reversed(parts)).lstrip(".")
