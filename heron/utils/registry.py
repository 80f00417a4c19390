"""Name-to-object registries and dotted-path import helpers.

``Registry`` follows fvcore's ``Registry`` (which Detectron2 re-exports): config files name a
component by a string, and the registry maps that string to the class or function. ``locate``
and ``_convert_target_to_string`` turn objects into importable dotted paths and back, as
LazyConfig's ``_target_`` needs.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from tabulate import tabulate

__all__ = ["Registry", "locate"]


class Registry:
    """A mapping from names to objects that supports registration by decorator.

    Example::

        BACKBONE_REGISTRY = Registry("BACKBONE")

        @BACKBONE_REGISTRY.register()
        class MyBackbone(nn.Module): ...

        BACKBONE_REGISTRY.register(OtherBackbone)  # direct call
        BACKBONE_REGISTRY.get("MyBackbone")

    An object is registered under its ``__name__``.
    """

    def __init__(self, name: str) -> None:
        """Create an empty registry.

        Args:
            name: the registry's name, shown in error messages and ``repr``.
        """
        self._name: str = name
        self._obj_map: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """The registry's name."""
        return self._name

    def _do_register(self, name: str, obj: Any) -> None:
        if name in self._obj_map:
            raise ValueError(
                f"An object named {name!r} was already registered in the {self._name!r} "
                f"registry (existing: {self._obj_map[name]!r}, new: {obj!r})"
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None) -> Any:
        """Register an object under its ``__name__``.

        Usable three ways: ``@reg.register()``, ``@reg.register`` or ``reg.register(obj)``.

        Args:
            obj: the class or function to register; None to get a decorator.

        Returns:
            A decorator when ``obj`` is None, otherwise ``obj`` itself.

        Raises:
            ValueError: if the name is already registered.
            TypeError: if the object has no ``__name__``.
        """
        if obj is None:

            def deco(func_or_class: Any) -> Any:
                self._do_register(_object_name(func_or_class), func_or_class)
                return func_or_class

            return deco
        self._do_register(_object_name(obj), obj)
        return obj

    def get(self, name: str) -> Any:
        """Return the object registered under ``name``.

        Raises:
            KeyError: naming the registry and listing the registered names, if ``name`` is
                unknown.
        """
        if name not in self._obj_map:
            known = ", ".join(sorted(self._obj_map)) or "(none)"
            raise KeyError(
                f"No object named {name!r} found in the {self._name!r} registry; "
                f"registered names: {known}"
            )
        return self._obj_map[name]

    def __contains__(self, name: object) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self._obj_map.items())

    def __len__(self) -> int:
        return len(self._obj_map)

    def __repr__(self) -> str:
        table = tabulate(
            list(self._obj_map.items()), headers=["Names", "Objects"], tablefmt="fancy_grid"
        )
        return f"Registry of {self._name}:\n{table}"

    __str__ = __repr__


def _object_name(obj: Any) -> str:
    name = getattr(obj, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(
            f"Registry.register needs an object with a __name__ (a class or function), "
            f"got {type(obj).__name__}: {obj!r}"
        )
    return name


def _import_prefix(module_name: str, full_name: str) -> ModuleType | None:
    """Import ``module_name``; None if that module (or a parent package) does not exist.

    An error raised while executing an existing module (a missing dependency, say) is not
    swallowed: it is re-raised as an ImportError naming ``full_name``, chained to the cause.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name
        if missing is not None and (
            module_name == missing or module_name.startswith(missing + ".")
        ):
            return None
        raise ImportError(
            f"Cannot locate {full_name!r}: importing {module_name!r} failed: {e}"
        ) from e
    except Exception as e:
        raise ImportError(
            f"Cannot locate {full_name!r}: importing {module_name!r} raised {e!r}"
        ) from e


def _getattr_path(obj: Any, base: str, attrs: list[str], full_name: str) -> Any:
    """Follow ``attrs`` from ``obj`` (reachable as ``base``), naming the failing step."""
    for i, attr in enumerate(attrs):
        try:
            obj = getattr(obj, attr)
        except AttributeError as e:
            owner = ".".join([base, *attrs[:i]])
            raise ImportError(
                f"Cannot locate {full_name!r}: {owner!r} has no attribute {attr!r}"
            ) from e
    return obj


def locate(name: str) -> Any:
    """Import and return the object at a dotted path.

    Accepts ``"pkg.module.attr.subattr"`` and ``"pkg.module:attr.subattr"``. For the dotted
    form the longest importable module prefix is imported and the remaining parts are looked
    up as attributes; builtins (``"int"``) resolve too.

    Args:
        name: the path, e.g. ``"heron.layers.wrappers.Conv2d"`` or ``"torch.nn:Conv2d"``.

    Returns:
        The object (a module if the whole path is one).

    Raises:
        TypeError: if ``name`` is not a string.
        ImportError: naming ``name`` if it cannot be resolved.
    """
    if not isinstance(name, str):
        raise TypeError(f"locate(name) expects a str, got {type(name).__name__}: {name!r}")
    if not name or name.startswith(".") or name.endswith(".") or ".." in name:
        raise ImportError(f"Cannot locate {name!r}: not a valid dotted path")
    if ":" in name:
        module_name, _, attr_path = name.partition(":")
        module = _import_prefix(module_name, name) if module_name else None
        if module is None:
            raise ImportError(f"Cannot locate {name!r}: no module named {module_name!r}")
        return _getattr_path(module, module_name, attr_path.split(".") if attr_path else [], name)

    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        module = _import_prefix(".".join(parts[:n]), name)
        if module is not None:
            return _getattr_path(module, ".".join(parts[:n]), parts[n:], name)
    if hasattr(builtins, parts[0]):
        return _getattr_path(builtins, "builtins", parts, name)
    raise ImportError(f"Cannot locate {name!r}: no module named {parts[0]!r}")


def _convert_target_to_string(t: Any) -> str:
    """Return the shortest importable dotted path of a class or function.

    ``heron.layers.wrappers.Conv2d`` becomes ``heron.layers.Conv2d`` when the package
    re-exports it (checked with ``locate(...) is t``), as Detectron2 does; the full
    ``module.qualname`` is the fallback.

    Raises:
        TypeError: if ``t`` has no ``__module__``/``__qualname__``.
    """
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"Expected a class or function with __module__ and __qualname__, "
            f"got {type(t).__name__}: {t!r}"
        )
    module_parts = module.split(".")
    for k in range(1, len(module_parts)):
        candidate = ".".join(module_parts[:k]) + "." + qualname
        try:
            if locate(candidate) is t:
                return candidate
        except ImportError:
            continue
    return f"{module}.{qualname}"
