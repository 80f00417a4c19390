"""Run Detectron2 projects on Heron unchanged: ``import detectron2.X`` resolves to Heron.

Two ways to opt in:

- in code, before the first ``detectron2`` import::

      import heron.compat
      heron.compat.alias_detectron2()

- without touching the project: install the shim distribution in the repository's
  ``compat/detectron2-shim`` folder (``pip install ./compat/detectron2-shim``). It provides
  a top-level ``detectron2`` package whose import calls :func:`alias_detectron2`.

After that, ``detectron2`` and every ``detectron2.<sub>`` name are the *same module
objects* as ``heron`` and ``heron.<sub>`` (not copies), so registries are shared: a custom
ROI head registered with ``detectron2.modeling.ROI_HEADS_REGISTRY`` is found by Heron's
``build_model``, and lazy configs whose targets say ``detectron2.…`` instantiate Heron's
classes. A Detectron2 module that Heron does not have raises ModuleNotFoundError naming
both names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["alias_detectron2", "is_aliased", "unalias_detectron2"]

_ALIAS = "detectron2"
_TARGET = "heron"


class _AliasLoader(importlib.abc.Loader):
    """Loads an alias name by importing the Heron module and handing back that object."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the Heron module ran when it was imported


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``detectron2`` and ``detectron2.<sub>`` as ``heron`` and ``heron.<sub>``."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != _ALIAS and not fullname.startswith(_ALIAS + "."):
            return None
        heron_name = _TARGET + fullname[len(_ALIAS) :]
        try:
            found = importlib.util.find_spec(heron_name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            raise ModuleNotFoundError(
                f"{fullname!r} has no Heron counterpart ({heron_name!r} does not exist); see "
                "the migration guide in Heron's README for what differs",
                name=fullname,
            )
        is_package = found.submodule_search_locations is not None
        spec = importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(heron_name), is_package=is_package
        )
        return spec


def _finder() -> _AliasFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, _AliasFinder)), None)


def is_aliased() -> bool:
    """Whether ``import detectron2`` currently resolves to Heron."""
    return _finder() is not None


def alias_detectron2() -> None:
    """Make ``detectron2`` and its submodules resolve to Heron's (idempotent).

    Raises:
        RuntimeError: a real Detectron2 is already imported in this process (mixing the
            two would give two sets of registries).
    """
    if is_aliased():
        return
    loaded = sys.modules.get(_ALIAS)
    shim = getattr(loaded, "__heron_shim__", False)  # the opt-in distribution's package
    if loaded is not None and not shim and not loaded.__name__.startswith(_TARGET):
        raise RuntimeError(
            "detectron2 is already imported from "
            f"{getattr(loaded, '__file__', '?')}: call heron.compat.alias_detectron2() "
            "before the first detectron2 import"
        )
    sys.meta_path.insert(0, _AliasFinder())


def unalias_detectron2() -> None:
    """Undo :func:`alias_detectron2`: drop the finder and the ``detectron2*`` entries of
    ``sys.modules`` that point at Heron's modules."""
    finder = _finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == _ALIAS or n.startswith(_ALIAS + ".")]:
        if getattr(sys.modules[name], "__name__", "").startswith(_TARGET):
            del sys.modules[name]
