"""Python ("lazy") configs on omegaconf: ``LazyCall`` and ``LazyConfig``, as in Detectron2.

A lazy config is an omegaconf tree in which a call is written down rather than made:
``LazyCall(nn.Linear)(in_features=4, out_features=2)`` is the DictConfig
``{"_target_": nn.Linear, "in_features": 4, "out_features": 2}``, which can be edited and is
built later by :func:`heron.config.instantiate.instantiate`. ``LazyConfig`` loads such trees
from ``.py`` files (executed, with relative imports between config files) and ``.yaml`` files
(safe YAML only), saves them to YAML, applies command-line overrides and prints them as Python.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import keyword
import logging
import math
import os
import re
import sys
import types
import uuid
from collections import abc
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, SCMode

from heron.config.instantiate import dump_dataclass
from heron.utils.file_io import PathManager
from heron.utils.registry import _convert_target_to_string, locate

__all__ = ["LazyCall", "LazyConfig"]

logger = logging.getLogger(__name__)

_OBJECT_FLAGS = {"allow_objects": True}


class LazyCall:
    """Wrap a callable so that calling the wrapper records the call instead of making it.

    Only keyword arguments are accepted. Example::

        layer_cfg = LazyCall(nn.Conv2d)(in_channels=32, out_channels=32)
        layer_cfg.out_channels = 64  # edit before building
        layer = instantiate(layer_cfg)
    """

    def __init__(self, target: Any) -> None:
        """Record the call target.

        Args:
            target: a callable, a dotted import path such as ``"torch.nn.Linear"``, or a
                mapping (another lazy config) that instantiates to a callable.

        Raises:
            TypeError: if ``target`` is none of these.
        """
        if not (callable(target) or isinstance(target, (str, abc.Mapping))):
            raise TypeError(
                f"LazyCall target must be a callable, a dotted-path string or a config that "
                f"builds a callable; got {type(target).__name__}: {target!r}"
            )
        self._target = target

    def __call__(self, **kwargs: Any) -> DictConfig:
        """Return a DictConfig holding ``_target_`` and ``kwargs``."""
        target = self._target
        if dataclasses.is_dataclass(target):
            # omegaconf would turn a dataclass type into a structured config; keep its path
            target = _convert_target_to_string(target)
        kwargs["_target_"] = target
        return DictConfig(content=kwargs, flags=_OBJECT_FLAGS)


# ----------------------------------------------------------------------------------------
# Loading Python config files
# ----------------------------------------------------------------------------------------

_CFG_PACKAGE_NAME = "heron._cfg_loader"
"""Prefix of the module names given to executed config files."""


def _random_package_name(filename: str) -> str:
    return f"{_CFG_PACKAGE_NAME}{uuid.uuid4().hex[:8]}.{os.path.basename(filename)}"


def _cast_to_config(obj: Any) -> Any:
    """Turn a plain dict into a DictConfig that may hold objects; leave anything else."""
    if isinstance(obj, dict):
        return DictConfig(obj, flags=_OBJECT_FLAGS)
    return obj


def _read_text(filename: str) -> str:
    with PathManager.open(filename, "r") as f:
        return f.read()


def _exec_config_file(filename: str, namespace: dict[str, Any]) -> None:
    """Execute a Python config file in ``namespace``, with config-aware relative imports.

    The namespace gets its own ``__builtins__`` whose ``__import__`` resolves relative
    imports to config files, so the process-wide import machinery is never patched.
    """
    try:
        code = compile(_read_text(filename), filename, "exec")
    except SyntaxError as e:
        raise SyntaxError(f"Config file {filename} has a syntax error: {e}") from e
    config_builtins = dict(builtins.__dict__)
    config_builtins["__import__"] = _config_import
    namespace["__builtins__"] = config_builtins
    namespace["__file__"] = filename
    namespace.setdefault("__name__", _random_package_name(filename))
    if not namespace.get("__package__"):
        namespace["__package__"] = namespace["__name__"]
    exec(code, namespace)


def _load_config_module(filename: str) -> types.ModuleType:
    """Execute a config file afresh as a module object (never cached in ``sys.modules``)."""
    module = types.ModuleType(_random_package_name(filename))
    _exec_config_file(filename, module.__dict__)
    return module


def _config_import(
    name: str,
    globals: dict[str, Any] | None = None,
    locals: dict[str, Any] | None = None,
    fromlist: tuple[str, ...] | list[str] | None = (),
    level: int = 0,
) -> Any:
    """``__import__`` for config files: relative imports load other config files.

    ``from .a.b import x`` executes ``<dir>/a/b.py`` and turns ``x`` into a DictConfig if it
    is a dict (Detectron2's rule). ``from ..common import train`` (a directory) gives
    ``train`` as the module of ``<dir>/../common/train.py``. Absolute imports are untouched.
    """
    if level == 0 or globals is None or "__file__" not in globals:
        return builtins.__import__(name, globals, locals, fromlist or (), level)
    importer = globals["__file__"]
    base = os.path.dirname(importer)
    for _ in range(level - 1):
        base = os.path.dirname(base)
    target = os.path.join(base, *name.split(".")) if name else base
    shown = "." * level + name
    if PathManager.isfile(target + ".py"):
        module = _load_config_module(target + ".py")
        for attr in fromlist or ():
            if attr == "*":
                continue
            if attr not in module.__dict__:
                raise ImportError(
                    f"Cannot import name {attr!r} from {shown!r} in config file {importer}: "
                    f"{target}.py does not define it"
                )
            module.__dict__[attr] = _cast_to_config(module.__dict__[attr])
        return module
    if not PathManager.isdir(target):
        raise ImportError(
            f"Cannot import {shown!r} in config file {importer}: {target}.py does not exist"
        )
    # a directory: each imported name is a config file inside it
    package = types.ModuleType(_random_package_name(target))
    package.__path__ = [target]
    for attr in fromlist or ():
        path = os.path.join(target, attr + ".py")
        if attr == "*" or not PathManager.isfile(path):
            raise ImportError(
                f"Cannot import {attr!r} from {shown!r} in config file {importer}: "
                f"{path} does not exist (only config files can be imported from a directory)"
            )
        module = _load_config_module(path)
        for key, value in list(module.__dict__.items()):
            if not key.startswith("_"):
                module.__dict__[key] = _cast_to_config(value)
        setattr(package, attr, module)
    return package


def _is_config_value(name: str, value: Any) -> bool:
    return not name.startswith("_") and (OmegaConf.is_config(value) or isinstance(value, dict))


def _select_keys(ret: Any, keys: str | tuple[str, ...], filename: str) -> Any:
    def get(key: str) -> Any:
        if key not in ret:
            raise KeyError(f"Config file {filename} has no key {key!r}")
        return _cast_to_config(ret[key])

    if isinstance(keys, str):
        return get(keys)
    return tuple(get(k) for k in keys)


# ----------------------------------------------------------------------------------------
# Saving: a YAML-safe copy of the tree
# ----------------------------------------------------------------------------------------

_YAML_SCALARS = (bool, int, float, str, type(None))


def _to_yaml_safe(obj: Any, path: str) -> Any:
    """Copy a ``to_container`` tree into YAML-safe values, warning (by key) about the rest.

    Callable ``_target_``s become dotted paths; dataclasses become ``_target_`` dicts;
    tuples become lists. Other objects are written as a string (a dotted path for classes and
    functions, else their repr) with a warning naming the key.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dump_dataclass(obj)
    if isinstance(obj, abc.Mapping):
        out = {}
        for k, v in obj.items():
            key_path = f"{path}.{k}" if path else str(k)
            if k == "_target_" and callable(v):
                v = _importable_path(v) or v
            out[k] = _to_yaml_safe(v, key_path)
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_yaml_safe(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, _YAML_SCALARS):
        return obj
    text = _importable_path(obj) or repr(obj)
    logger.warning(
        "Config key %r holds a %s, which YAML cannot represent; saved as the string %r",
        path,
        type(obj).__name__,
        text,
    )
    return text


def _importable_path(obj: Any) -> str | None:
    """The dotted path that imports ``obj`` back (checked with ``locate``), else None."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return None
    try:
        path = _convert_target_to_string(obj)
        return path if locate(path) is obj else None
    except (TypeError, ImportError):
        return None


# ----------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[^.=\s][^=\s]*$")


def _parse_override_value(text: str) -> Any:
    """Parse an override's value the way Hydra's grammar reads the common cases.

    Python literals (numbers, quoted strings, lists, tuples, dicts, True/False/None) come from
    ``ast.literal_eval``; ``true``/``false``/``null`` (any case), ``inf``/``nan`` and lists or
    dicts of unquoted words (``[a, b]``) are understood; anything else is a string.
    """
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text.startswith(("[", "{")):
        value, end = _parse_element(text, 0)
        if text[end:].strip():
            raise ValueError(f"unexpected text after position {end}: {text[end:]!r}")
        return value
    return _parse_word(text)


def _parse_word(word: str) -> Any:
    try:
        return ast.literal_eval(word)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    lowered = word.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if lowered in ("inf", "+inf", "-inf", "nan", "+nan", "-nan"):
        return float(lowered)
    return word


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _parse_element(text: str, i: int, stops: str = ",]}") -> tuple[Any, int]:
    """Parse one value starting at ``text[i]``; return it and the index after it."""
    i = _skip_spaces(text, i)
    if i < len(text) and text[i] in "[{":
        close = "]" if text[i] == "[" else "}"
        items: list[Any] = []
        i = _skip_spaces(text, i + 1)
        while i < len(text) and text[i] != close:
            if close == "]":
                value, i = _parse_element(text, i)
                items.append(value)
            else:
                key, i = _parse_element(text, i, stops=":")
                if i >= len(text) or text[i] != ":":
                    raise ValueError(f"expected ':' after dict key {key!r} in {text!r}")
                value, i = _parse_element(text, i + 1)
                items.append((key, value))
            i = _skip_spaces(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_spaces(text, i + 1)
        if i >= len(text):
            raise ValueError(f"missing {close!r} in {text!r}")
        return (items if close == "]" else dict(items)), i + 1
    if i < len(text) and text[i] in "'\"":
        end = i + 1
        while end < len(text) and text[end] != text[i]:
            end += 2 if text[end] == "\\" else 1
        if end >= len(text):
            raise ValueError(f"unterminated quote in {text!r}")
        return ast.literal_eval(text[i : end + 1]), end + 1
    start, depth = i, 0
    while i < len(text) and (depth > 0 or text[i] not in stops):
        if text[i] in "{[(":
            depth += 1
        elif text[i] in "}])":
            depth -= 1
        i += 1
    return _parse_word(text[start:i].strip()), i


def _walk_to_parent(cfg: Any, key: str) -> tuple[Any, str]:
    """Return the node that holds the last part of ``key``, and that part.

    Raises:
        KeyError: naming ``key`` and the first missing or non-config prefix.
    """
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[: i + 1])
        try:
            if isinstance(node, DictConfig):
                if part not in node.keys():  # noqa: SIM118 (`in` skips '???' values)
                    raise KeyError(part)
                child = node[part]
            else:
                child = node[int(part)]
        except Exception as e:
            raise KeyError(
                f"Cannot override {key!r}: {prefix!r} does not exist in the config"
            ) from e
        if not isinstance(child, (DictConfig, ListConfig)):
            raise KeyError(
                f"Cannot override {key!r}: {prefix!r} is a {type(child).__name__}, not a config"
            )
        node = child
    return node, parts[-1]


def _apply_one_override(cfg: Any, override: str) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    delete = key.startswith("~")
    key = key.lstrip("~+")
    if not _KEY_RE.match(key) or (not sep and not delete):
        raise ValueError(f"Override {override!r} is not of the form 'a.b.c=value'")
    try:
        value = _parse_override_value(raw)
    except ValueError as e:
        raise ValueError(f"Cannot parse the value of override {override!r}: {e}") from e
    parent, last = _walk_to_parent(cfg, key)
    if isinstance(parent, ListConfig):
        if not re.fullmatch(r"-?\d+", last) or not -len(parent) <= int(last) < len(parent):
            raise KeyError(f"Cannot override {key!r}: {last!r} is not an index of a list")
        last_key: Any = int(last)
        exists = True
    else:
        last_key = last
        exists = last in parent.keys()  # noqa: SIM118 (`in` skips '???' values)
    if delete:
        if not exists:
            raise KeyError(f"Cannot delete {key!r}: it does not exist in the config")
        if sep and raw.strip() and parent[last_key] != value:
            raise KeyError(
                f"Cannot delete {key!r}: its value is {parent[last_key]!r}, not {value!r}"
            )
        del parent[last_key]
        return
    OmegaConf.update(cfg, key, value, merge=True)


# ----------------------------------------------------------------------------------------
# Python source
# ----------------------------------------------------------------------------------------

_LINE_WIDTH = 100
_IDENT_PATH_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.$")


def _is_name(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


class _PySource:
    """Renders a ``to_container`` tree as Python expressions, collecting the imports."""

    def __init__(self, reserved: set[str]) -> None:
        self.imports: set[str] = set()
        self.reserved = reserved

    def name_of(self, obj: Any) -> str | None:
        """An expression importing ``obj`` (and record the import), or None."""
        path = _importable_path(obj)
        if path is None or path.split(".")[0] in self.reserved:
            return None
        parts = path.split(".")
        for n in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:n])
            if module in sys.modules:
                self.imports.add(module)
                return path
        return None

    def render(self, obj: Any, indent: int, lead: int) -> str:
        """Render ``obj``; ``lead`` columns are already used on its first line."""
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            obj = dump_dataclass(obj)
        if isinstance(obj, abc.Mapping) and "_target_" in obj:
            target = obj["_target_"]
            head = f"L({self.render_target(target, indent)})("
            items = []
            for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])):
                if k == "_target_":
                    continue
                text = f"{k}=" if _is_name(k) else f"**{{{k!r}: "
                value = self.render(v, indent + 4, indent + 4 + len(text))
                items.append(text + value + ("" if _is_name(k) else "}"))
            return self._join(head, items, ")", indent, lead)
        if isinstance(obj, abc.Mapping):
            items = [
                f"{k!r}: " + self.render(v, indent + 4, indent + 6 + len(repr(k)))
                for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
            ]
            return self._join("{", items, "}", indent, lead)
        if isinstance(obj, list):
            items = [self.render(v, indent + 4, indent + 4) for v in obj]
            return self._join("[", items, "]", indent, lead)
        if isinstance(obj, tuple):
            items = [self.render(v, indent + 4, indent + 4) for v in obj]
            if len(items) == 1 and "\n" not in items[0]:
                return f"({items[0]},)"
            return self._join("(", items, ")", indent, lead)
        return self.render_leaf(obj)

    def render_target(self, target: Any, indent: int) -> str:
        if isinstance(target, abc.Mapping):
            return self.render(target, indent, indent)
        if callable(target):
            name = self.name_of(target)
            if name is not None:
                return name
            try:
                path = _convert_target_to_string(target)
            except TypeError:
                return self.render_leaf(target)
            logger.warning("to_py: _target_ %r cannot be imported; written as a string", path)
            return repr(path)
        return self.render_leaf(target)

    def render_leaf(self, obj: Any) -> str:
        if isinstance(obj, float) and not math.isfinite(obj):
            return f"float({str(obj)!r})"
        if isinstance(obj, (bool, int, float, complex, str, bytes, type(None))):
            return repr(obj)
        name = self.name_of(obj)
        if name is not None:
            return name
        logger.warning("to_py: %r has no Python literal form; written as a string", obj)
        return repr(repr(obj))

    @staticmethod
    def _join(head: str, items: list[str], close: str, indent: int, lead: int) -> str:
        inline = head + ", ".join(items) + close
        if "\n" not in inline and lead + len(inline) <= _LINE_WIDTH:
            return inline
        pad = " " * (indent + 4)
        body = "".join(f"{pad}{item},\n" for item in items)
        return f"{head}\n{body}{' ' * indent}{close}"


def _py_statements(writer: _PySource, obj: abc.Mapping, base: str) -> list[str]:
    """``base.key = value`` lines, one per leaf; plain mappings become ``base.key = {}``."""
    lines = []
    for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])):
        target = f"{base}.{k}" if _is_name(k) else f"{base}[{k!r}]"
        if isinstance(v, abc.Mapping) and "_target_" not in v:
            lines.append(f"{target} = {{}}")
            lines.extend(_py_statements(writer, v, target))
        else:
            lines.append(f"{target} = " + writer.render(v, 0, len(target) + 3))
    return lines


class LazyConfig:
    """Load, save, override and print omegaconf configs that may hold lazy calls."""

    @staticmethod
    def load_rel(filename: str, keys: str | tuple[str, ...] | None = None) -> Any:
        """Like :meth:`load`, with ``filename`` relative to the calling file's directory.

        Raises:
            ValueError: if the caller has no source file (e.g. code run from a string).
        """
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        caller_file = caller.f_code.co_filename if caller is not None else "<unknown>"
        del frame, caller
        if caller_file.startswith("<"):
            raise ValueError(
                f"LazyConfig.load_rel({filename!r}) needs a caller with a source file; it was "
                f"called from {caller_file}"
            )
        return LazyConfig.load(os.path.join(os.path.dirname(caller_file), filename), keys)

    @staticmethod
    def load(filename: str, keys: str | tuple[str, ...] | None = None) -> Any:
        """Load a config file.

        A ``.py`` file is executed; relative imports inside it (``from .common.model import
        model``) load other config files, each afresh. Its public globals that are dicts or
        omegaconf containers make up the config. A ``.yaml``/``.yml`` file is read with
        omegaconf's safe YAML loader.

        Args:
            filename: path of the file (absolute or relative to the working directory).
            keys: None for the whole config; a key name for that value only; a tuple of key
                names for a tuple of values.

        Returns:
            A DictConfig (whole config), or the selected value(s), dicts as DictConfigs.

        Raises:
            ValueError: if the suffix is not .py, .yaml or .yml, or the YAML is invalid.
            KeyError: if a key in ``keys`` is not in the config.
            ImportError: if a relative import names a config file that does not exist.
        """
        filename = filename.replace("/./", "/")
        suffix = os.path.splitext(filename)[1]
        if suffix not in (".py", ".yaml", ".yml"):
            raise ValueError(
                f"Config file {filename} must be a Python (.py) or YAML (.yaml/.yml) file, "
                f"got suffix {suffix!r}"
            )
        if suffix == ".py":
            namespace: dict[str, Any] = {}
            _exec_config_file(filename, namespace)
            if keys is not None:
                return _select_keys(namespace, keys, filename)
            content = {
                k: _cast_to_config(v) for k, v in namespace.items() if _is_config_value(k, v)
            }
            return DictConfig(content, flags=_OBJECT_FLAGS)
        try:
            with PathManager.open(filename, "r") as f:
                ret = OmegaConf.create(OmegaConf.load(f), flags=_OBJECT_FLAGS)
        except yaml.YAMLError as e:
            raise ValueError(f"Cannot read YAML config file {filename}: {e}") from e
        return ret if keys is None else _select_keys(ret, keys, filename)

    @staticmethod
    def save(cfg: Any, filename: str) -> None:
        """Save a config to a YAML file that :meth:`load` reads back into an equal config.

        Callable ``_target_``s are written as dotted import paths and dataclass values as
        ``_target_`` dicts. Interpolations (``${...}``) are kept, not resolved. Tuples are
        written as lists. A value YAML cannot represent (a lambda, a tensor) is written as a
        string, with a warning naming its key.

        Args:
            cfg: an omegaconf config (or a plain dict/list).
            filename: the YAML file to write.
        """
        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(
                cfg, resolve=False, structured_config_mode=SCMode.INSTANTIATE
            )
        dumped = yaml.safe_dump(
            _to_yaml_safe(cfg, ""),
            default_flow_style=None,
            allow_unicode=True,
            width=9999,
            sort_keys=False,
        )
        with PathManager.open(filename, "w") as f:
            f.write(dumped)

    @staticmethod
    def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
        """Apply command-line overrides in place.

        Each override is ``a.b.c=value``; the value follows Hydra's override grammar for the
        common cases (see ``_parse_override_value``; hydra-core itself is not used). ``+key``
        and ``++key`` add or force a key as plain ``key`` does; ``~key`` deletes it. The parent
        of the key (``a.b``) must exist and be a config; the last part may be new when its
        parent is a DictConfig. A dict value is merged into an existing DictConfig.

        Args:
            cfg: an omegaconf config.
            overrides: strings such as ``["train.max_iter=100", "model.name=rcnn"]``.

        Returns:
            ``cfg``.

        Raises:
            ValueError: if an override is not of the form ``key=value`` or its value does
                not parse.
            KeyError: if a parent key is missing or not a config.
        """
        if isinstance(overrides, str):
            raise TypeError(f"overrides must be a list of strings, got the string {overrides!r}")
        for override in overrides:
            _apply_one_override(cfg, override)
        return cfg

    @staticmethod
    def to_py(cfg: Any, prefix: str = "cfg.") -> str:
        """Write a config as Python source that rebuilds it.

        Lines read ``cfg.model = L(torch.nn.Linear)(in_features=4, out_features=2)``, keys in
        sorted order as Detectron2 prints them, after the imports they need and a line that
        creates the root. Interpolations are resolved. A value with no Python literal form is
        written as the string of its repr (with a warning).

        Args:
            cfg: an omegaconf config (or plain dict).
            prefix: the root's name followed by "." (``"cfg."``), or "" to write the top-level
                keys as module globals, i.e. as a config file :meth:`load` can read.

        Returns:
            The source, ending with a newline.

        Raises:
            ValueError: if ``prefix`` is neither "" nor a dotted name ending in ".".
        """
        if prefix and not _IDENT_PATH_RE.match(prefix):
            raise ValueError(
                f"to_py prefix must be '' or a dotted name ending in '.', got {prefix!r}"
            )
        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(
                cfg, resolve=True, structured_config_mode=SCMode.INSTANTIATE
            )
        reserved = {"L", "OmegaConf"}
        if prefix:
            root = prefix[:-1]
            reserved.add(root.split(".")[0])
        elif isinstance(cfg, abc.Mapping):
            reserved.update(str(k) for k in cfg)
        else:
            raise ValueError("to_py with prefix='' needs a mapping at the root of the config")
        writer = _PySource(reserved)
        if prefix and isinstance(cfg, abc.Mapping) and "_target_" not in cfg:
            body = [f"{root} = OmegaConf.create(flags={{'allow_objects': True}})"]
            body += _py_statements(writer, cfg, root)
        elif prefix:
            body = [f"{root} = " + writer.render(cfg, 0, len(root) + 3)]
        else:
            body = []
            for k, v in sorted(cfg.items(), key=lambda kv: str(kv[0])):
                name = k if _is_name(k) else f"globals()[{k!r}]"
                body.append(f"{name} = " + writer.render(v, 0, len(name) + 3))
        header = ["from heron.config.lazy import LazyCall as L"]
        if prefix:
            header.append("from omegaconf import OmegaConf")
        header += [f"import {m}" for m in sorted(writer.imports)]
        return "\n".join([*header, "", *body]) + "\n"
