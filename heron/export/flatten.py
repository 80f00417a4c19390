"""Flatten nested model inputs and outputs into tuples of tensors, and rebuild them.

Tracers (`torch.jit.trace`, the TorchScript-based ONNX exporter) and `torch.export` only
see functions of tensors that return tensors. Detection models take ``list[dict]`` and
return `Instances`. A *schema* records the nesting of an object when it is flattened, so
that the flat tuple can be turned back into the object:

    flat, schema = flatten_to_tuple([{"image": img}])   # flat == (img,)
    schema(flat)                                        # [{"image": img}]

`TracingAdapter` wraps a model so that its forward takes and returns flat tuples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from heron.structures.keypoints import Keypoints
from heron.structures.masks import BitMasks, ROIMasks

__all__ = [
    "DictSchema",
    "IdentitySchema",
    "InstancesSchema",
    "ListSchema",
    "TensorWrapSchema",
    "TracingAdapter",
    "TupleSchema",
    "flatten_to_tuple",
]

# Tensor wrappers that flatten to their one `.tensor` and rebuild with `cls(tensor)`.
_TENSOR_WRAPPERS: dict[str, type] = {
    "Boxes": Boxes,
    "BitMasks": BitMasks,
    "Keypoints": Keypoints,
    "ROIMasks": ROIMasks,
}


def _split(values: tuple, sizes: list[int]) -> list[tuple]:
    """Cut `values` into consecutive pieces of the given lengths."""
    if sum(sizes) != len(values):
        raise ValueError(f"schema expects {sum(sizes)} flat values, got {len(values)}")
    pieces, start = [], 0
    for size in sizes:
        pieces.append(tuple(values[start : start + size]))
        start += size
    return pieces


@dataclass
class IdentitySchema:
    """A single tensor (or, with allow_non_tensor, any leaf)."""

    def __call__(self, values: tuple) -> Any:
        return values[0]

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, IdentitySchema]:
        return (obj,), cls()


@dataclass
class ListSchema:
    """A list: the children's schemas and how many flat values each one took."""

    schemas: list[Any]
    sizes: list[int]

    def __call__(self, values: tuple) -> list:
        return [schema(part) for schema, part in zip(self.schemas, _split(values, self.sizes))]

    @classmethod
    def flatten(cls, obj: list | tuple) -> tuple[tuple, Any]:
        flat, schemas, sizes = [], [], []
        for item in obj:
            item_flat, item_schema = flatten_to_tuple(item)
            flat.extend(item_flat)
            schemas.append(item_schema)
            sizes.append(len(item_flat))
        return tuple(flat), cls(schemas, sizes)


@dataclass
class TupleSchema(ListSchema):
    """A tuple, flattened as a list."""

    def __call__(self, values: tuple) -> tuple:
        return tuple(super().__call__(values))


@dataclass
class DictSchema(ListSchema):
    """A dict with string keys; values are flattened in sorted key order."""

    keys: list[str]

    def __call__(self, values: tuple) -> dict:
        return dict(zip(self.keys, super().__call__(values)))

    @classmethod
    def flatten(cls, obj: dict) -> tuple[tuple, DictSchema]:
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"only dicts with str keys can be flattened, got key {key!r}")
        keys = sorted(obj)
        flat, schema = ListSchema.flatten([obj[k] for k in keys])
        return flat, cls(schema.schemas, schema.sizes, keys)


@dataclass
class InstancesSchema(DictSchema):
    """`Instances`: its fields as a dict, then its image_size as one (2,) tensor."""

    def __call__(self, values: tuple) -> Instances:
        image_size = values[-1]
        fields = super().__call__(values[:-1])
        if isinstance(image_size, Tensor) and not torch.jit.is_tracing():
            image_size = (int(image_size[0]), int(image_size[1]))
        return Instances(image_size, **fields)

    @classmethod
    def flatten(cls, obj: Instances) -> tuple[tuple, InstancesSchema]:
        flat, schema = DictSchema.flatten(obj.get_fields())
        h, w = obj.image_size
        if isinstance(h, Tensor):  # sizes are 0-d tensors while tracing: keep them traced
            size = torch.stack([h, w]).to(torch.int64)
        else:
            size = torch.tensor([h, w], dtype=torch.int64)
        return (*flat, size), cls(schema.schemas, schema.sizes, schema.keys)


@dataclass
class TensorWrapSchema:
    """A class that wraps one tensor (`Boxes`, `BitMasks`, `Keypoints`, `ROIMasks`)."""

    class_name: str

    def __call__(self, values: tuple) -> Any:
        return _TENSOR_WRAPPERS[self.class_name](values[0])


def flatten_to_tuple(obj: Any) -> tuple[tuple, Any]:
    """Flatten a nest of lists, tuples, str-keyed dicts, `Instances` and tensor wrappers.

    Args:
        obj: the object. Leaves are tensors; other leaves (ints, strings, None) are kept
            as they are and `TracingAdapter` decides whether to accept them.

    Returns:
        (flat, schema): the leaves in a fixed order, and a callable schema with
        ``schema(flat)`` equal to `obj`.
    """
    if isinstance(obj, Instances):
        return InstancesSchema.flatten(obj)
    if isinstance(obj, dict):
        return DictSchema.flatten(obj)
    if isinstance(obj, tuple):
        flat, schema = ListSchema.flatten(obj)
        return flat, TupleSchema(schema.schemas, schema.sizes)
    if isinstance(obj, list):
        return ListSchema.flatten(obj)
    name = type(obj).__name__
    if name in _TENSOR_WRAPPERS and isinstance(obj, _TENSOR_WRAPPERS[name]):
        return (obj.tensor,), TensorWrapSchema(name)
    return IdentitySchema.flatten(obj)


class TracingAdapter(nn.Module):
    """Wrap a model so that it takes and returns flat tuples of tensors, for tracing.

    Example::

        adapter = TracingAdapter(model, [{"image": image}], inference_func)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        outputs = adapter.outputs_schema(traced(*adapter.flattened_inputs))

    Attributes:
        flattened_inputs: the sample inputs as a tuple of tensors.
        inputs_schema: rebuilds the model's inputs from such a tuple.
        outputs_schema: rebuilds the model's outputs (e.g. a list of `Instances`) from the
            forward's flat outputs; set by the first forward.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Any,
        inference_func: Callable[..., Any] | None = None,
        allow_non_tensor: bool = False,
    ) -> None:
        """
        Args:
            model: the model to wrap.
            inputs: sample inputs, a tuple of positional arguments (anything else is one
                argument), e.g. ``([{"image": image}],)``.
            inference_func: ``inference_func(model, *inputs)`` returns the outputs to
                flatten; default ``model(*inputs)``.
            allow_non_tensor: keep non-tensor leaves of the inputs (ints, strings) as
                constants of the trace instead of raising. Outputs must always flatten
                to tensors.
        """
        super().__init__()
        self.model = model.module if hasattr(model, "module") else model
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        self.inputs = inputs
        self.allow_non_tensor = allow_non_tensor
        self.inference_func = inference_func or (lambda model, *args: model(*args))
        self.flattened_inputs, self.inputs_schema = flatten_to_tuple(inputs)
        self.outputs_schema: Any = None
        self._non_tensor_inputs: dict[int, Any] = {}
        if allow_non_tensor:
            leaves = self.flattened_inputs
            self._non_tensor_inputs = {
                i: x for i, x in enumerate(leaves) if not isinstance(x, Tensor)
            }
            self.flattened_inputs = tuple(x for x in leaves if isinstance(x, Tensor))
        else:
            _check_tensors(self.flattened_inputs, "input")

    def _full_inputs(self, args: tuple) -> tuple:
        if not self._non_tensor_inputs:
            return args
        total = len(args) + len(self._non_tensor_inputs)
        tensors = iter(args)
        return tuple(
            self._non_tensor_inputs[i] if i in self._non_tensor_inputs else next(tensors)
            for i in range(total)
        )

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        """Run the model on flat inputs (as `flattened_inputs`) and return flat outputs."""
        if len(args) != len(self.flattened_inputs):
            raise ValueError(
                f"TracingAdapter expects {len(self.flattened_inputs)} input tensors, "
                f"got {len(args)}"
            )
        inputs = self.inputs_schema(self._full_inputs(args))
        with torch.no_grad():
            outputs = self.inference_func(self.model, *inputs)
        flat, schema = flatten_to_tuple(outputs)
        _check_tensors(flat, "output")
        if self.outputs_schema is None:
            self.outputs_schema = schema
        elif self.outputs_schema != schema:
            raise ValueError(
                "the model's outputs changed structure between calls: "
                f"first {self.outputs_schema}, now {schema}"
            )
        return flat


def _check_tensors(values: tuple, what: str) -> None:
    for i, x in enumerate(values):
        if not isinstance(x, Tensor):
            raise TypeError(
                f"TracingAdapter: flattened {what} {i} is a {type(x).__name__} ({x!r}), not a "
                "Tensor"
                + (
                    "; pass allow_non_tensor=True to keep it as a constant of the trace"
                    if what == "input"
                    else ""
                )
            )
