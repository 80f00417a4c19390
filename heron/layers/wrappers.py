"""Thin wrappers around torch layers and functions, with Detectron2's names.

`Conv2d` adds an optional norm and activation to `torch.nn.Conv2d`; the other names are
the torch classes and functions themselves, re-exported so that model code written against
Detectron2's `layers` module keeps working. The helpers here (`cat`, `nonzero_tuple`,
`shapes_to_tensor`, `move_device_like`) behave the same in eager mode, tracing and
scripting, which the export path relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "Linear",
    "cat",
    "check_if_dynamo_compiling",
    "cross_entropy",
    "empty_input_loss_func_wrapper",
    "interpolate",
    "move_device_like",
    "nonzero_tuple",
    "shapes_to_tensor",
]

# Plain torch classes and functions under Detectron2's names. Empty (0-batch) inputs are
# supported by torch itself, so no wrapping is needed any more.
ConvTranspose2d = nn.ConvTranspose2d
BatchNorm2d = nn.BatchNorm2d
Linear = nn.Linear
interpolate = F.interpolate


def shapes_to_tensor(x: list[int], device: torch.device | None = None) -> Tensor:
    """Turn a list of sizes into a 1-D int64 tensor that stays traceable.

    In eager mode and scripting `x` holds Python ints. While tracing, sizes read from a
    tensor's `.shape` are 0-d tensors; stacking them (rather than `torch.as_tensor`, which
    records constants) keeps the traced graph dependent on the input's shape.

    Args:
        x: sizes, as ints (eager, scripting) or 0-d tensors (tracing).
        device: device of the result; None keeps the default (or the traced tensors').

    Returns:
        (len(x),) tensor of the sizes.
    """
    if torch.jit.is_scripting():
        return torch.as_tensor(x, device=device)
    if torch.jit.is_tracing():
        if not all(isinstance(t, Tensor) for t in x):
            kinds = [type(t).__name__ for t in x]
            raise TypeError(f"shapes_to_tensor: while tracing, x must hold tensors; got {kinds}")
        ret = torch.stack(x)
        if device is not None and ret.device != torch.device(device):
            ret = ret.to(device=device)
        return ret
    return torch.as_tensor(x, device=device)


def check_if_dynamo_compiling() -> bool:
    """Return True while `torch.compile` (dynamo) is tracing the calling code."""
    return torch.compiler.is_compiling()


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """`torch.cat` that returns a single tensor as is, without copying it.

    Args:
        tensors: list or tuple of tensors to concatenate.
        dim: dimension along which to concatenate.
    """
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat: tensors must be a list or tuple, got {type(tensors).__name__}")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def empty_input_loss_func_wrapper(loss_func: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap a `loss(input, target, reduction=...)` so an empty mean gives 0, not NaN.

    With an empty `target` and `reduction="mean"`, the wrapped function returns
    `input.sum() * 0.0`: a zero that stays connected to the graph, so backward still
    reaches the parameters that produced `input` (distributed training requires that
    every parameter receives a gradient).
    """

    def wrapped_loss_func(input: Tensor, target: Tensor, *, reduction: str = "mean", **kwargs):
        if target.numel() == 0 and reduction == "mean":
            return input.sum() * 0.0
        return loss_func(input, target, reduction=reduction, **kwargs)

    wrapped_loss_func.__name__ = getattr(loss_func, "__name__", "wrapped_loss_func")
    wrapped_loss_func.__doc__ = (
        f"{wrapped_loss_func.__name__} that returns a graph-connected 0 for an empty mean."
    )
    return wrapped_loss_func


cross_entropy = empty_input_loss_func_wrapper(F.cross_entropy)


class Conv2d(nn.Conv2d):
    """`torch.nn.Conv2d` followed by an optional normalization and activation.

    Takes the arguments of `torch.nn.Conv2d` plus two keyword arguments:

    - `norm`: a module applied to the convolution's output (registered as the submodule
      `norm`, so its state_dict keys are `<name>.norm.*` as in Detectron2);
    - `activation`: a callable applied after `norm`.

    Inputs with an empty batch give an empty output of the right shape, in training and
    evaluation alike.
    """

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if (
            not torch.jit.is_scripting()
            and self.training
            and x.numel() == 0
            and isinstance(self.norm, nn.SyncBatchNorm)
        ):
            # SyncBatchNorm's all-gather cannot handle a rank with no samples.
            raise ValueError(
                "Conv2d: SyncBatchNorm does not support empty inputs in training; "
                f"got input of shape {tuple(x.shape)}"
            )
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


# No return annotation: TorchScript cannot express tuple[Tensor, ...], and it infers a
# list of tensors here; eager mode returns a tuple.
def nonzero_tuple(x: Tensor):
    """`x.nonzero(as_tuple=True)`, also under TorchScript (which lacks `as_tuple`).

    Returns:
        one (K,) int64 tensor of indices per dimension of `x` (at least one for a 0-d x).
    """
    if torch.jit.is_scripting():
        if x.dim() == 0:
            return x.unsqueeze(0).nonzero().unbind(1)
        return x.nonzero().unbind(1)
    return x.nonzero(as_tuple=True)


@torch.jit.script_if_tracing
def move_device_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Move `src` to `dst`'s device.

    When tracing, a device is recorded as a constant; scripting this small function
    keeps the traced model movable to another device.
    """
    return src.to(dst.device)
