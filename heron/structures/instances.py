"""`Instances`: the per-image container of named, equally long per-object fields."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from heron.structures.boxes import _is_tracing_or_compiling

__all__ = ["Instances"]


class Instances:
    """The objects of one image (predictions or annotations) as named fields.

    Every field holds one entry per object, so all fields have the same length: tensors,
    lists, `Boxes`, `BitMasks`, ... (anything with `__len__` and `__getitem__`).

    Fields are read and written as attributes (``instances.gt_boxes = boxes``) or with
    `set` / `get` / `has` / `remove`. Names starting with ``_`` are plain attributes, not
    fields. Indexing (``instances[mask]``) indexes every field and returns new `Instances`.

    Unlike Detectron2, which raises NotImplementedError, iterating over `Instances` raises
    TypeError: it is the exception Python uses for non-iterable objects, and iteration is
    unsupported by design, not unfinished (index the fields instead).
    """

    def __init__(self, image_size: tuple[int, int], **kwargs: Any) -> None:
        """
        Args:
            image_size: (height, width) of the image.
            kwargs: fields to add, e.g. ``pred_boxes=Boxes(...)``.
        """
        self._image_size = image_size
        self._fields: dict[str, Any] = {}
        for name, value in kwargs.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Private names (and _fields itself, which is
        # missing while copy/pickle rebuild the object) must not look into _fields, or
        # this would recurse forever.
        if name.startswith("_"):
            raise AttributeError(name)
        fields = self.__dict__.get("_fields", {})
        if name not in fields:
            raise AttributeError(
                f"Instances has no field '{name}'; its fields are {sorted(fields)}"
            )
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set the field `name` to `value`, whose length must match the existing fields."""
        if not hasattr(value, "__len__"):
            raise TypeError(
                f"Instances field '{name}' must have a length (one entry per instance), "
                f"got a {type(value).__name__}"
            )
        # A graph capture (trace, torch.export) would turn the lengths into constants or
        # guards on data-dependent sizes: the check runs in eager mode only.
        if self._fields and not _is_tracing_or_compiling():
            data_len, current = len(value), len(self)
            if data_len != current:
                raise ValueError(
                    f"Instances field '{name}' has length {data_len}, but the Instances has "
                    f"length {current} (fields {sorted(self._fields)})"
                )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        """Return whether the field `name` exists."""
        return name in self._fields

    def remove(self, name: str) -> None:
        """Remove the field `name`."""
        if name not in self._fields:
            raise KeyError(
                f"Instances has no field '{name}'; its fields are {sorted(self._fields)}"
            )
        del self._fields[name]

    def get(self, name: str) -> Any:
        """Return the field `name`."""
        if name not in self._fields:
            raise KeyError(
                f"Instances has no field '{name}'; its fields are {sorted(self._fields)}"
            )
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        """Return the dict of all fields (the container's own dict: edits show through)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        """Return new Instances whose fields that have a `.to` method are converted with it.

        Arguments are passed to every such field's `to` (e.g. a device). Other fields are
        shared, not copied.
        """
        ret = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            ret.set(name, value)
        return ret

    def __getitem__(self, item: int | slice | torch.Tensor) -> Instances:
        """Index every field.

        Args:
            item: an int (gives Instances of length 1), a slice, an (N,) bool mask or a long
                tensor of indices.
        """
        if type(item) is int:
            n = len(self)
            if item >= n or item < -n:
                raise IndexError(f"Instances index {item} is out of range for length {n}")
            # A one-element slice keeps every field a sequence of length 1
            # (slice(-1, None, n) selects only the last element).
            item = slice(item, None, n)
        ret = Instances(self._image_size)
        for name, value in self._fields.items():
            ret.set(name, value[item])
        return ret

    def __len__(self) -> int:
        for value in self._fields.values():
            # __len__ rather than len(): len() must return an int, which tracing dislikes
            return value.__len__()
        raise TypeError("Instances has no fields, so its length is undefined; set a field first")

    def __iter__(self):
        raise TypeError(
            "Instances is not iterable; index it (instances[i]) or iterate over a field"
        )

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        """Concatenate Instances of the same image, field by field.

        Tensors are concatenated with `torch.cat`, lists are chained, and other values use
        their type's `cat` (e.g. `Boxes.cat`). Fields come from the first element.

        Args:
            instance_lists: a non-empty list of Instances with the same `image_size`.
        """
        if not isinstance(instance_lists, (list, tuple)) or len(instance_lists) == 0:
            raise ValueError("Instances.cat: expected a non-empty list of Instances")
        for i, inst in enumerate(instance_lists):
            if not isinstance(inst, Instances):
                raise TypeError(f"Instances.cat: element {i} is a {type(inst).__name__}")
        if len(instance_lists) == 1:
            return instance_lists[0]

        image_size = instance_lists[0].image_size
        if not isinstance(image_size, torch.Tensor):  # may be a tensor while tracing
            for i, inst in enumerate(instance_lists[1:], start=1):
                if inst.image_size != image_size:
                    raise ValueError(
                        f"Instances.cat: element {i} has image_size {inst.image_size}, "
                        f"element 0 has {image_size}"
                    )
        ret = Instances(image_size)
        for name in instance_lists[0]._fields:
            values = [inst.get(name) for inst in instance_lists]
            v0 = values[0]
            if isinstance(v0, torch.Tensor):
                merged = torch.cat(values, dim=0)
            elif isinstance(v0, list):
                merged = list(itertools.chain(*values))
            elif hasattr(type(v0), "cat"):
                merged = type(v0).cat(values)
            else:
                raise ValueError(
                    f"Instances.cat: field '{name}' has type {type(v0).__name__}, which has no "
                    "cat method and is not a Tensor or list"
                )
            ret.set(name, merged)
        return ret

    def __repr__(self) -> str:
        num = len(self) if self._fields else 0
        fields = ", ".join(f"{name}: {value}" for name, value in self._fields.items())
        return (
            f"Instances(num_instances={num}, image_height={self._image_size[0]}, "
            f"image_width={self._image_size[1]}, fields=[{fields}])"
        )

    __str__ = __repr__
