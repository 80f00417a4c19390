"""Global catalogs of datasets and their metadata.

``DatasetCatalog`` maps a dataset name to a function that returns its records (a
``list[dict]`` in Detectron2's dataset-dict format); the function runs only when the dataset
is asked for. ``MetadataCatalog`` maps a dataset name to a :class:`Metadata` bag holding
facts shared by all its records (class names, colors, id maps, evaluator type).
"""

from __future__ import annotations

import logging
from collections import UserDict
from collections.abc import Callable
from typing import Any

__all__ = ["DatasetCatalog", "Metadata", "MetadataCatalog"]

logger = logging.getLogger(__name__)


class _DatasetCatalog(UserDict):
    """Registry from dataset name to a zero-argument function returning its records."""

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        """Register ``func`` as the loader of dataset ``name``.

        Args:
            name: dataset name, e.g. "coco_2017_train".
            func: callable taking no arguments and returning ``list[dict]``; it is called
                every time :meth:`get` asks for the dataset, so it should be cheap to hold.

        Raises:
            TypeError: ``func`` is not callable.
            ValueError: ``name`` is already registered.
        """
        if not callable(func):
            raise TypeError(
                f"DatasetCatalog.register({name!r}, func): func must be callable, "
                f"got {type(func).__name__}"
            )
        if name in self:
            raise ValueError(f"Dataset {name!r} is already registered in DatasetCatalog")
        self[name] = func

    def get(self, name: str) -> list[dict]:  # type: ignore[override]
        """Call the loader registered for ``name`` and return its records.

        Raises:
            KeyError: ``name`` is not registered; the message lists the registered names.
        """
        try:
            func = self[name]
        except KeyError as e:
            raise KeyError(
                f"Dataset {name!r} is not registered. Available datasets: "
                f"{', '.join(sorted(self.keys()))}"
            ) from e
        return func()

    def list(self) -> list[str]:
        """Return the names of all registered datasets."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget dataset ``name``; raises KeyError if it is not registered."""
        self.pop(name)

    def __repr__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __str__ = __repr__


DatasetCatalog = _DatasetCatalog()
DatasetCatalog.__doc__ = _DatasetCatalog.__doc__


# Detectron2 renamed these keys; the old names still work, with a warning.
_RENAMED = {
    "class_names": "thing_classes",
    "dataset_id_to_contiguous_id": "thing_dataset_id_to_contiguous_id",
    "stuff_class_names": "stuff_classes",
}


class Metadata:
    """Attribute bag of facts about one dataset, with set-once semantics.

    Setting an attribute that already holds a *different* value raises ValueError, so two
    registrations cannot silently disagree about, say, the class names; setting the same
    value again is allowed.

    Example::

        MetadataCatalog.get("my_set").thing_classes = ["cat", "dog"]
        MetadataCatalog.get("my_set").set(evaluator_type="coco")
    """

    name: str = "N/A"

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __getattr__(self, key: str) -> Any:
        # Called only when normal lookup fails.
        if key in _RENAMED:
            new = _RENAMED[key]
            logger.warning("Metadata '%s' was renamed to '%s'!", key, new)
            return getattr(self, new)
        if key.startswith("__"):  # keep copy/pickle protocol lookups quiet
            raise AttributeError(key)
        available = sorted(self.__dict__.keys())
        raise AttributeError(
            f"Attribute {key!r} does not exist in the metadata of dataset "
            f"{self.__dict__.get('name', 'N/A')!r}. Available keys are {available}."
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _RENAMED:
            new = _RENAMED[key]
            logger.warning("Metadata '%s' was renamed to '%s'!", key, new)
            setattr(self, new, value)
            return
        if key in self.__dict__:
            old = self.__dict__[key]
            if _differ(old, value):
                raise ValueError(
                    f"Attribute {key!r} in the metadata of dataset {self.name!r} cannot be "
                    f"set to a different value: it is {old!r}, got {value!r}"
                )
            return
        self.__dict__[key] = value

    def as_dict(self) -> dict[str, Any]:
        """Return a shallow copy of all attributes as a dict."""
        return dict(self.__dict__)

    def set(self, **kwargs: Any) -> Metadata:
        """Set several attributes at once and return ``self`` (for chaining)."""
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """Return attribute ``key``, or ``default`` if it is not set."""
        try:
            return getattr(self, key)
        except AttributeError:
            return default

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Metadata({items})"


def _differ(a: Any, b: Any) -> bool:
    """True if ``a`` and ``b`` are not equal (arrays compared elementwise, never raising)."""
    try:
        result = a != b
        if isinstance(result, bool):
            return result
        return bool(result.any())
    except Exception:  # objects whose comparison is ambiguous or unsupported
        return a is not b


class _MetadataCatalog(UserDict):
    """Registry from dataset name to its :class:`Metadata`, created on first use."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        """Return the Metadata of ``name``, creating an empty one (named ``name``) if needed."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"MetadataCatalog.get expects a non-empty dataset name, got {name!r}")
        meta = self.data.get(name)
        if meta is None:
            meta = self[name] = Metadata(name=name)
        return meta

    def list(self) -> list[str]:
        """Return the names of all datasets that have metadata."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget the metadata of ``name``; raises KeyError if there is none."""
        self.pop(name)

    def __repr__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __str__ = __repr__


MetadataCatalog = _MetadataCatalog()
MetadataCatalog.__doc__ = _MetadataCatalog.__doc__
