"""Detectron2's yacs-style ``CfgNode``, ``get_cfg`` and the ``configurable`` decorator.

``CfgNode`` is a dict with attribute access whose keys are fixed by the defaults
(``heron.config.defaults._C``): merging a file, another config or a ``KEY VALUE`` list may only
change existing keys, to a value of a compatible type, unless a node allows new keys. Errors
name the full key, the file (or list) it came from, and close matches. Files are read with a
safe YAML loader (see ``yaml_eval``) and may inherit from others through ``_BASE_``.

The semantics are those of yacs/fvcore as Detectron2 uses them, with three deliberate
differences: an int is accepted where the default is a float (and stored as a float), a frozen
node refuses item assignment and merges as well as attribute assignment, and a string whose
text happens to parse as a Python literal stays a string when the default is a string.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from heron.config.yaml_eval import load_yaml
from heron.utils.file_io import PathManager

__all__ = [
    "BASE_KEY",
    "CfgNode",
    "configurable",
    "get_cfg",
    "global_cfg",
    "set_global_cfg",
]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
_VALID_TYPES = (tuple, list, str, int, float, bool, type(None))
_VALID_NAMES = "tuple, list, str, int, float, bool, None"
# Internal state lives in the instance __dict__, never among the config keys.
_IMMUTABLE = "__immutable__"
_NEW_ALLOWED = "__new_allowed__"
_DEPRECATED = "__deprecated_keys__"
_RENAMED = "__renamed_keys__"
_INTERNAL = (_IMMUTABLE, _NEW_ALLOWED, _DEPRECATED, _RENAMED)


class CfgNode(dict):
    """A config node: a dict whose keys are also attributes; nested dicts become nodes.

    Args:
        init_dict: initial content; nested plain dicts are converted to ``CfgNode``.
        key_list: the node's key path from the root, used in error messages.
        new_allowed: whether merges may add keys that this node (and its children created
            here) does not have.

    Raises:
        TypeError: if a key is not a string or a leaf value is not one of
            tuple, list, str, int, float, bool or None.
    """

    def __init__(
        self,
        init_dict: Mapping[str, Any] | None = None,
        key_list: list[str] | None = None,
        new_allowed: bool = False,
    ) -> None:
        key_list = [] if key_list is None else list(key_list)
        self.__dict__[_IMMUTABLE] = False
        self.__dict__[_NEW_ALLOWED] = new_allowed
        self.__dict__[_DEPRECATED] = set()
        self.__dict__[_RENAMED] = {}
        content: dict[str, Any] = {}
        for key, value in (init_dict or {}).items():
            path = [*key_list, str(key)]
            if not isinstance(key, str):
                raise TypeError(f"Config keys must be strings, got {key!r} at {'.'.join(path)}")
            if isinstance(value, dict) and not isinstance(value, CfgNode):
                value = type(self)(value, path, new_allowed=new_allowed)
            elif not isinstance(value, (CfgNode, *_VALID_TYPES)):
                raise TypeError(
                    f"Config key {'.'.join(path)} has a value of type {type(value).__name__} "
                    f"({value!r}); valid types are {_VALID_NAMES} and nested mappings"
                )
            content[key] = value
        super().__init__(content)

    # ------------------------------------------------------------------ attribute access

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            if name.startswith("__"):  # protocol probes (copy, pickle, numpy): no hints
                raise AttributeError(name) from None
            close = difflib.get_close_matches(name, [str(k) for k in self], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AttributeError(f"Config node has no key {name!r}{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _INTERNAL:
            raise AttributeError(f"{name!r} is internal CfgNode state and cannot be set")
        if name.startswith("COMPUTED_"):
            # fvcore: COMPUTED_ keys may be set once (even on a frozen node), never changed.
            if name in self and self[name] != value:
                raise KeyError(
                    f"Computed attribute {name!r} already exists with a different value: "
                    f"old={self[name]!r}, new={value!r}"
                )
            dict.__setitem__(self, name, value)
            return
        self[name] = value

    def __delattr__(self, name: str) -> None:
        if name not in self:
            raise AttributeError(f"Config node has no key {name!r}")
        del self[name]

    # ------------------------------------------------------------------ mutation guards

    def _check_mutable(self, key: Any) -> None:
        if self.__dict__.get(_IMMUTABLE, False):
            raise AttributeError(
                f"Cannot change config key {key!r}: the CfgNode is frozen (call defrost() first)"
            )

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_mutable(key)
        if isinstance(value, dict) and not isinstance(value, CfgNode):
            value = type(self)(value, [key], new_allowed=self.is_new_allowed())
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._check_mutable(key)
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        self._check_mutable(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._check_mutable("<any>")
        return super().popitem()

    def clear(self) -> None:
        self._check_mutable("<all>")
        super().clear()

    # ------------------------------------------------------------------ copies

    def __deepcopy__(self, memo: dict[int, Any]) -> CfgNode:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        for key, value in self.items():
            dict.__setitem__(new, key, copy.deepcopy(value, memo))
        return new

    def __copy__(self) -> CfgNode:
        new = type(self).__new__(type(self))
        new.__dict__.update({k: copy.copy(v) for k, v in self.__dict__.items()})
        for key, value in self.items():
            dict.__setitem__(new, key, value)
        return new

    def clone(self) -> CfgNode:
        """Return a deep copy (frozen if this node is frozen)."""
        return copy.deepcopy(self)

    # ------------------------------------------------------------------ state flags

    def freeze(self) -> None:
        """Make this node and all nodes below it immutable."""
        self._set_immutable(True)

    def defrost(self) -> None:
        """Make this node and all nodes below it mutable again."""
        self._set_immutable(False)

    def is_frozen(self) -> bool:
        """Return whether this node is frozen."""
        return self.__dict__.get(_IMMUTABLE, False)

    def _set_immutable(self, value: bool) -> None:
        self.__dict__[_IMMUTABLE] = value
        for child in self.values():
            if isinstance(child, CfgNode):
                child._set_immutable(value)

    def set_new_allowed(self, is_new_allowed: bool) -> None:
        """Let merges add unknown keys to this node and all nodes below it (or stop that)."""
        self.__dict__[_NEW_ALLOWED] = is_new_allowed
        for child in self.values():
            if isinstance(child, CfgNode):
                child.set_new_allowed(is_new_allowed)

    def is_new_allowed(self) -> bool:
        """Return whether merges may add keys to this node."""
        return self.__dict__.get(_NEW_ALLOWED, False)

    def register_deprecated_key(self, key: str) -> None:
        """Ignore ``key`` (full dotted name) with a warning when a merge sets it."""
        self.__dict__[_DEPRECATED].add(key)

    def register_renamed_key(
        self, old_name: str, new_name: str, message: str | None = None
    ) -> None:
        """Make merges that set ``old_name`` fail with a pointer to ``new_name``."""
        self.__dict__[_RENAMED][old_name] = new_name if message is None else (new_name, message)

    def key_is_deprecated(self, full_key: str) -> bool:
        """Return whether ``full_key`` was registered as deprecated (on this root)."""
        if full_key in self.__dict__.get(_DEPRECATED, ()):
            logger.warning("Config key %s is deprecated and ignored", full_key)
            return True
        return False

    def key_is_renamed(self, full_key: str) -> bool:
        """Return whether ``full_key`` was registered as renamed (on this root)."""
        return full_key in self.__dict__.get(_RENAMED, {})

    def raise_key_rename_error(self, full_key: str) -> None:
        """Raise the KeyError for a renamed key, naming its new name."""
        new = self.__dict__[_RENAMED][full_key]
        note = ""
        if isinstance(new, tuple):
            new, note = new[0], f" Note: {new[1]}"
        raise KeyError(f"Config key {full_key} was renamed to {new}; update your config.{note}")

    # ------------------------------------------------------------------ output

    def dump(self, **kwargs: Any) -> str:
        """Return the config as YAML (keys sorted unless ``sort_keys=False`` is given).

        Keyword arguments go to ``yaml.safe_dump``. Tuples are written as lists; loading the
        text back into a config with the same defaults gives an equal config.

        Raises:
            TypeError: naming the key, if a value is not a valid config type.
        """
        return yaml.safe_dump(_to_plain(self, []), **kwargs)

    def __str__(self) -> str:
        try:
            return self.dump()
        except TypeError:
            return self.__repr__()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    # ------------------------------------------------------------------ loading

    @classmethod
    def _open_cfg(cls, filename: str) -> Any:
        """Open a config file or URL for reading (through ``PathManager``)."""
        return PathManager.open(filename, "r")

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict[str, Any]:
        """Read a YAML config, resolving its ``_BASE_`` chain into one plain dict.

        ``_BASE_`` is a path or a list of paths; relative paths are relative to the folder of
        the file that names them, unless they are absolute, start with "~" or are URLs. Bases
        are read recursively and merged in order; the file's own keys are merged last.

        Args:
            filename: path or URL of the config.
            allow_unsafe: accepted for Detectron2 compatibility and ignored: files are always
                read safely (see ``heron.config.yaml_eval``).

        Raises:
            FileNotFoundError: if the file or one of its bases does not exist.
            ValueError: naming the file, on bad YAML, refused tags, a bad ``_BASE_`` value,
                a ``_BASE_`` cycle, or a key that is a mapping in one file and not in another.
        """
        return cls._load_with_sources(os.fspath(filename), ())[0]

    @classmethod
    def _load_with_sources(
        cls, filename: str, chain: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Like ``load_yaml_with_base``, plus the file that last set each dotted key."""
        ident = filename if "://" in filename else os.path.abspath(filename)
        if ident in chain:
            raise ValueError(f"_BASE_ cycle: {' -> '.join((*chain, ident))}")
        if not PathManager.isfile(filename):
            where = f" (the _BASE_ of '{chain[-1]}')" if chain else ""
            raise FileNotFoundError(f"Config file '{filename}' does not exist{where}")
        with cls._open_cfg(filename) as f:
            cfg = load_yaml(f, filename)
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ValueError(
                f"{filename}: a config file must hold a mapping, got {type(cfg).__name__}"
            )
        bases = cfg.pop(BASE_KEY, None)
        sources = {key: filename for key in _dotted_keys(cfg, [])}
        if bases is None:
            return cfg, sources
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ValueError(f"{filename}: _BASE_ must be a path or a list of paths, got {bases!r}")
        merged: dict[str, Any] = {}
        merged_sources: dict[str, str] = {}
        for base in bases:
            base_path = _resolve_base_path(base, filename)
            base_cfg, base_sources = cls._load_with_sources(base_path, (*chain, ident))
            _merge_plain(base_cfg, merged, [], base_path)
            merged_sources.update(base_sources)
        _merge_plain(cfg, merged, [], filename)
        merged_sources.update(sources)
        return merged, merged_sources

    # ------------------------------------------------------------------ merging

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML config file (with its ``_BASE_`` chain) into this config.

        A file without ``VERSION`` is taken as the latest version unless it has keys of the
        old version 1 (``MODEL.WEIGHT``, ``TEST.AUG_ON``), in which case it is upgraded.

        Args:
            cfg_filename: path or URL of the file.
            allow_unsafe: accepted for Detectron2 compatibility and ignored (loading is
                always safe).

        Raises:
            KeyError: for a key the defaults do not have (names the key and the file).
            ValueError: for a value of the wrong type (names key, types and file), bad YAML,
                or a file of a newer VERSION.
            FileNotFoundError: if the file or a base does not exist.
            AttributeError: if this config is frozen.
        """
        self._check_mutable("<merge_from_file>")
        cfg_filename = os.fspath(cfg_filename)
        loaded, sources = self._load_with_sources(cfg_filename, ())
        try:
            loaded_cfg = type(self)(loaded)
        except TypeError as e:
            raise TypeError(f"{cfg_filename}: {e}") from e

        def describe(full_key: str) -> str:
            return f"from file '{sources.get(full_key, cfg_filename)}'"

        if "VERSION" not in self:  # a custom config without versioning: plain merge
            self._merge_tree(loaded_cfg, [], self, describe)
            return
        self._merge_versioned(loaded_cfg, cfg_filename, describe)

    def _merge_versioned(
        self, loaded_cfg: CfgNode, filename: str, describe: Callable[[str], str]
    ) -> None:
        from heron.config import compat
        from heron.config.defaults import _C

        if self.VERSION != _C.VERSION:
            raise ValueError(
                f"merge_from_file needs a config of the latest VERSION {_C.VERSION}, "
                f"this one is VERSION {self.VERSION}"
            )
        loaded_ver = loaded_cfg.get("VERSION")
        if loaded_ver is None:
            loaded_ver = compat.guess_version(loaded_cfg, filename)
        if isinstance(loaded_ver, bool) or not isinstance(loaded_ver, int):
            raise ValueError(f"{filename}: VERSION must be an int, got {loaded_ver!r}")
        if loaded_ver > self.VERSION:
            raise ValueError(
                f"{filename}: cannot merge a VERSION {loaded_ver} config into a "
                f"VERSION {self.VERSION} config"
            )
        if loaded_ver == self.VERSION:
            self._merge_tree(loaded_cfg, [], self, describe)
            return
        logger.warning(
            "Config '%s' is VERSION %d; upgrading it to VERSION %d on load",
            filename,
            loaded_ver,
            self.VERSION,
        )
        old_self = compat.downgrade_config(self, to_version=loaded_ver)
        old_self._merge_tree(loaded_cfg, [], old_self, describe)
        new_config = compat.upgrade_config(old_self)
        self.clear()
        self.update(new_config)

    def merge_from_other_cfg(self, cfg_other: Mapping[str, Any]) -> None:
        """Merge another config (or plain mapping) into this one, with the same checks.

        Raises:
            KeyError, ValueError, AttributeError: as ``merge_from_file``; errors say
                "from other cfg".
        """
        if BASE_KEY in cfg_other:
            raise ValueError(f"The reserved key '{BASE_KEY}' can only be used in files")
        self._check_mutable("<merge_from_other_cfg>")
        self._merge_tree(cfg_other, [], self, lambda _key: "from other cfg")

    def merge_from_list(self, cfg_list: list[Any]) -> None:
        """Merge ``["KEY.SUB", value, ...]`` pairs, e.g. from the command line.

        String values are decoded with ``ast.literal_eval`` ("0.5" -> 0.5, "(1, 2)" -> tuple)
        and kept as strings when that fails.

        Raises:
            ValueError: for an odd-length list, ``_BASE_``, or a value of the wrong type.
            KeyError: for a key the config does not have, naming it and "from list".
            AttributeError: if this config is frozen.
        """
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"merge_from_list needs KEY VALUE pairs, got an odd number of items "
                f"({len(cfg_list)}): {cfg_list!r}"
            )
        self._check_mutable("<merge_from_list>")
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if not isinstance(full_key, str):
                raise TypeError(f"merge_from_list keys must be strings, got {full_key!r}")
            if BASE_KEY in full_key.split("."):
                raise ValueError(f"The reserved key '{BASE_KEY}' can only be used in files")
            if self.key_is_deprecated(full_key):
                continue
            if self.key_is_renamed(full_key):
                self.raise_key_rename_error(full_key)
            *parents, last = full_key.split(".")
            node: CfgNode = self
            for part in parents:
                if not isinstance(node.get(part), CfgNode):
                    raise KeyError(self._unknown_key_message(full_key, "from list"))
                node = node[part]
            value = self._decode_cfg_value(raw)
            if last in node:
                value = _coerce_type(raw, value, node[last], full_key, "from list")
            elif not node.is_new_allowed():
                raise KeyError(self._unknown_key_message(full_key, "from list"))
            node[last] = value

    def _merge_tree(
        self,
        other: Mapping[str, Any],
        key_list: list[str],
        root: CfgNode,
        describe: Callable[[str], str],
    ) -> None:
        """Merge ``other`` into this node; ``root`` holds the registries and the key list."""
        for key, raw in other.items():
            full_key = ".".join([*key_list, key])
            value = self._decode_cfg_value(copy.deepcopy(raw))
            if key in self:
                value = _coerce_type(raw, value, self[key], full_key, describe(full_key))
                if isinstance(value, CfgNode) and isinstance(self[key], CfgNode):
                    self[key]._merge_tree(value, [*key_list, key], root, describe)
                else:
                    self[key] = value
            elif self.is_new_allowed():
                self[key] = value
            elif root.key_is_deprecated(full_key):
                continue
            elif root.key_is_renamed(full_key):
                root.raise_key_rename_error(full_key)
            else:
                raise KeyError(root._unknown_key_message(full_key, describe(full_key)))

    @classmethod
    def _decode_cfg_value(cls, value: Any) -> Any:
        """Turn mappings into nodes and Python-literal strings into values (yacs rules)."""
        if isinstance(value, dict):
            return cls(value)
        if not isinstance(value, str):
            return value
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value

    def _unknown_key_message(self, full_key: str, source: str) -> str:
        close = difflib.get_close_matches(full_key, list(_dotted_keys(self, [])), n=3)
        hint = f". Did you mean: {', '.join(close)}?" if close else ""
        return f"Non-existent config key: {full_key} ({source}){hint}"


def _dotted_keys(tree: Mapping[str, Any], key_list: list[str]) -> Iterator[str]:
    """Yield the dotted path of every key in ``tree``, inner nodes included."""
    for key, value in tree.items():
        path = [*key_list, str(key)]
        yield ".".join(path)
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, path)


def _resolve_base_path(base: str, including_file: str) -> str:
    if base.startswith("~"):
        base = os.path.expanduser(base)
    if "://" in base or os.path.isabs(base):
        return base
    return os.path.join(os.path.dirname(including_file), base)


def _merge_plain(src: dict[str, Any], dst: dict[str, Any], key_list: list[str], file: str) -> None:
    """Merge plain dict ``src`` into ``dst``; mappings merge key by key, other values replace."""
    for key, value in src.items():
        if isinstance(value, dict) and key in dst:
            if not isinstance(dst[key], dict):
                full_key = ".".join([*key_list, key])
                raise ValueError(
                    f"{file}: {full_key} is a mapping here but a {type(dst[key]).__name__} "
                    "in a base config; cannot inherit it"
                )
            _merge_plain(value, dst[key], [*key_list, key], file)
        else:
            dst[key] = value


def _coerce_type(raw: Any, value: Any, original: Any, full_key: str, source: str) -> Any:
    """Check ``value`` against the current ``original`` and convert it where allowed.

    Allowed: the same type; list <-> tuple (converted to the original's container types,
    nested ones included); None in place of, or replaced by, any valid type; int where a
    float is expected (converted); two nodes. A string that literal-decoded to another type
    stays a string if the original is one.
    """
    if isinstance(raw, str) and isinstance(original, str) and not isinstance(value, str):
        return raw
    original_type, value_type = type(original), type(value)
    if value_type is original_type and value_type not in (list, tuple):
        return value
    if isinstance(value, CfgNode) and isinstance(original, CfgNode):
        return value
    if original is None and value_type in _VALID_TYPES:
        return value
    if value is None and original_type in _VALID_TYPES:
        return value
    if original_type in (list, tuple) and value_type in (list, tuple):
        return _like_sequence(value, original)
    if original_type is float and value_type is int:
        return float(value)
    raise ValueError(
        f"Type mismatch for config key {full_key} ({source}): the config has "
        f"{original_type.__name__} ({original!r}) but got {value_type.__name__} ({value!r})"
    )


def _like_sequence(value: list | tuple, template: list | tuple) -> list | tuple:
    """Give ``value`` the container type of ``template`` at every nesting level.

    The first element of ``template`` stands for all of its elements, so a list of lists
    merged over a default tuple of tuples becomes a tuple of tuples.
    """
    inner = template[0] if template and isinstance(template[0], (list, tuple)) else None
    items = [
        _like_sequence(v, inner) if inner is not None and isinstance(v, (list, tuple)) else v
        for v in value
    ]
    return type(template)(items)


def _to_plain(value: Any, key_list: list[str]) -> Any:
    """Convert a node tree to plain dicts and lists that ``yaml.safe_dump`` accepts."""
    if isinstance(value, Mapping):
        return {k: _to_plain(v, [*key_list, str(k)]) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v, key_list) for v in value]  # fresh lists: no YAML anchors
    if type(value) in _VALID_TYPES:
        return value
    raise TypeError(
        f"Cannot dump config key {'.'.join(key_list)}: {type(value).__name__} ({value!r}) "
        f"is not one of {_VALID_NAMES}"
    )


# --------------------------------------------------------------------------- defaults access

global_cfg = CfgNode()


def get_cfg() -> CfgNode:
    """Return a fresh copy of the default config (``heron.config.defaults._C``)."""
    from heron.config.defaults import _C

    return _C.clone()


def set_global_cfg(cfg: CfgNode) -> None:
    """Make ``global_cfg`` hold the content of ``cfg``, for Detectron2 compatibility.

    ``global_cfg`` is updated in place, so modules that imported it see the change. Heron's
    own code never reads it.
    """
    global_cfg.clear()
    global_cfg.update(cfg)


# --------------------------------------------------------------------------- configurable


def configurable(init_func: Callable | None = None, *, from_config: Callable | None = None):
    """Let a class's ``__init__`` or a function be called with a config instead of arguments.

    Usage 1, on ``__init__``: the class needs a ``from_config(cls, cfg, ...)`` classmethod that
    returns the constructor's keyword arguments. ``A(cfg)``, ``A(cfg=cfg)`` and
    ``A(cfg, extra=1)`` call ``from_config`` and pass its dict (plus keyword arguments it
    does not accept) to ``__init__``; ``A(a=1, b=2)`` is a plain call.

    Usage 2, on a function: ``@configurable(from_config=fn)`` where ``fn(cfg, ...)`` returns
    the function's keyword arguments; the decorated function gets a ``from_config`` attribute.

    A call counts as "with a config" when the first positional argument, or the ``cfg``
    keyword, is a ``CfgNode`` or an omegaconf ``DictConfig``.

    Raises:
        TypeError: on misuse of the decorator, when the class has no ``from_config`` or it is
            not a classmethod, or when ``from_config``'s first parameter is not ``cfg``.
    """
    if init_func is not None:
        if not (
            inspect.isfunction(init_func)
            and from_config is None
            and init_func.__name__ == "__init__"
        ):
            raise TypeError(
                "@configurable without arguments must decorate a class's __init__; "
                "decorate a function with @configurable(from_config=...) instead "
                f"(got {init_func!r})"
            )

        @functools.wraps(init_func)
        def wrapped_init(self: Any, *args: Any, **kwargs: Any) -> None:
            from_config_func = _class_from_config(type(self))
            if _called_with_cfg(*args, **kwargs):
                init_func(self, **_get_args_from_config(from_config_func, *args, **kwargs))
            else:
                init_func(self, *args, **kwargs)

        return wrapped_init

    if from_config is None:
        return configurable  # @configurable() is the same as @configurable
    if not inspect.isfunction(from_config):
        raise TypeError(
            f"configurable(from_config=...) needs a function, got {type(from_config).__name__}"
        )

    def wrapper(orig_func: Callable) -> Callable:
        @functools.wraps(orig_func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if _called_with_cfg(*args, **kwargs):
                return orig_func(**_get_args_from_config(from_config, *args, **kwargs))
            return orig_func(*args, **kwargs)

        wrapped.from_config = from_config  # type: ignore[attr-defined]
        return wrapped

    return wrapper


def _class_from_config(cls: type) -> Callable:
    from_config_func = getattr(cls, "from_config", None)
    if from_config_func is None:
        raise TypeError(
            f"{cls.__qualname__} uses @configurable but has no 'from_config' classmethod"
        )
    if not inspect.ismethod(from_config_func):
        raise TypeError(
            f"{cls.__qualname__}.from_config must be a classmethod (for @configurable), "
            f"got {type(inspect.getattr_static(cls, 'from_config')).__name__}"
        )
    return from_config_func


def _get_args_from_config(from_config_func: Callable, *args: Any, **kwargs: Any) -> dict:
    """Call ``from_config`` with the arguments it accepts; return its dict plus the rest.

    Keyword arguments that ``from_config`` does not declare (and cannot absorb through
    ``*args``/``**kwargs``) skip it and are added to the result, overriding its entries.
    """
    signature = inspect.signature(from_config_func)
    params = list(signature.parameters.values())
    if inspect.ismethod(from_config_func):
        name = f"{from_config_func.__self__.__qualname__}.from_config"
    else:
        name = getattr(from_config_func, "__qualname__", repr(from_config_func))
    if not params or params[0].name != "cfg":
        got = ", ".join(p.name for p in params) or "nothing"
        raise TypeError(f"{name} must take 'cfg' as its first argument, it takes ({got})")
    extra_kwargs: dict[str, Any] = {}
    if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        for key in list(kwargs):
            if key not in signature.parameters:
                extra_kwargs[key] = kwargs.pop(key)
    ret = from_config_func(*args, **kwargs)
    if not isinstance(ret, Mapping):
        raise TypeError(f"{name} must return a dict of arguments, got {type(ret).__name__}")
    return {**ret, **extra_kwargs}


def _called_with_cfg(*args: Any, **kwargs: Any) -> bool:
    """Return whether the call passes a config (first positional or ``cfg=``)."""
    from omegaconf import DictConfig

    if args and isinstance(args[0], (CfgNode, DictConfig)):
        return True
    # from_config's first parameter is always "cfg", so these two checks cover every call.
    return isinstance(kwargs.pop("cfg", None), (CfgNode, DictConfig))
