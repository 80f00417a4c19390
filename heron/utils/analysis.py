"""Count the FLOPs, activations and parameters of a model (Detectron2's utils/analysis.py).

Counting runs the model once per input image, in eval mode and without gradients, under a
``TorchDispatchMode`` that sees every ATen operator the forward pass executes:

- FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, whose formulas count
  a multiply-add as **2 FLOPs** (a k x k convolution with C_in input channels costs
  ``2 * C_in * k * k`` per output element). fvcore, and therefore Detectron2, count one
  multiply-add as 1 flop: pass ``per_mac=True`` to get those numbers (multiply-accumulates,
  exactly half of the default for every operator counted here).
- Activations are the number of output elements of convolutions and matrix products
  (``linear``, ``matmul``, ``bmm`` and ``einsum`` reach the dispatcher as ``addmm``, ``mm``
  and ``bmm``), as fvcore defines them.

Only operators with a cost formula are counted (convolutions, matrix products, attention);
element-wise operators, normalizations, pooling and resizing count 0, where fvcore gives
some of them a small cost. Operator names are the ATen names, with every convolution
variant reported as ``"conv"``.

Detection models do input-dependent work (the number of proposals and detections changes
the cost of the ROI heads), so the functions average over the inputs they are given, each
run alone (a batch of one), as Detectron2 recommends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

__all__ = [
    "ActivationCountAnalysis",
    "FlopCountAnalysis",
    "activation_count_operators",
    "flop_count_operators",
    "parameter_count",
    "parameter_count_table",
]

# Counts of one run: module name ("" = the whole model) -> operator name -> count.
_Counts = dict[str, dict[str, float]]

_aten = torch.ops.aten
_CONV_OPS = {"convolution", "_convolution", "cudnn_convolution", "_slow_conv2d_forward"}
# Operators whose output elements are activations (fvcore: conv, linear, matmul, einsum).
_ACTIVATION_OPS = {
    getattr(_aten, name)
    for name in ("convolution", "_convolution", "mm", "addmm", "bmm", "baddbmm", "_scaled_mm")
    if hasattr(_aten, name)
}


def _op_name(packet: Any) -> str:
    """Short operator name: "aten.addmm" -> "addmm"; convolution variants -> "conv"."""
    name = str(packet).split(".")[-1]
    return "conv" if name in _CONV_OPS else name


def _check_inputs(inputs: Any) -> list[torch.Tensor]:
    """The "image" tensors of Detectron2-style model inputs (a list of dicts)."""
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)):
        raise TypeError(
            "inputs must be a list of dicts with an 'image' tensor (Detectron2's model input), "
            f"got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise ValueError("inputs is empty: give at least one dict with an 'image' tensor")
    images = []
    for i, d in enumerate(inputs):
        if not isinstance(d, dict):
            raise TypeError(
                f"inputs[{i}] must be a dict with an 'image' tensor, got {type(d).__name__}"
            )
        if "image" not in d:
            raise KeyError(f"inputs[{i}] has no 'image' key (keys: {sorted(d)})")
        if not isinstance(d["image"], torch.Tensor):
            raise TypeError(
                f"inputs[{i}]['image'] must be a tensor, got {type(d['image']).__name__}"
            )
        images.append(d["image"])
    return images


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _module_names(tracker_names: _Counts, root: nn.Module) -> _Counts:
    """Rename ModuleTracker keys ("Global", "GeneralizedRCNN.backbone") to state_dict-style
    module names ("", "backbone"); the root's own entry duplicates "Global" and is dropped."""
    root_name = type(root).__name__
    out: _Counts = {}
    for name, ops in tracker_names.items():
        if name == "Global":
            out[""] = ops
        elif name.startswith(root_name + "."):
            out[name[len(root_name) + 1 :]] = ops
    return out


class _ActivationCounterMode(TorchDispatchMode):
    """Adds the output numel of every activation operator to each module being run."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in _ACTIVATION_OPS:
            # Composite operators (linear, matmul, einsum) reach us whole under some modes;
            # decompose them so that the products inside are seen, as FlopCounterMode does.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        name = _op_name(packet)
        for parent in set(self.tracker.parents) | {"Global"}:
            self.counts[parent][name] += out.numel()
        return out


def _count_flops(model: nn.Module, image: torch.Tensor) -> _Counts:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model([{"image": image}])
    raw = {
        mod: {_op_name(op): float(v) for op, v in ops.items()}
        for mod, ops in counter.get_flop_counts().items()
    }
    return _module_names(raw, model)


def _count_activations(model: nn.Module, image: torch.Tensor) -> _Counts:
    with torch.no_grad(), ModuleTracker() as tracker, _ActivationCounterMode(tracker) as mode:
        model([{"image": image}])
    raw = {mod: dict(ops) for mod, ops in mode.counts.items()}
    return _module_names(raw, model)


class _OperatorCountAnalysis:
    """Counts per module and operator, averaged over the inputs (each run alone)."""

    _count_one: Callable[[nn.Module, torch.Tensor], _Counts]

    def __init__(self, model: nn.Module, inputs: list[dict[str, Any]]) -> None:
        images = _check_inputs(inputs)
        model = _unwrap(model)
        was_training = model.training
        model.eval()
        totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        try:
            for image in images:
                for mod, ops in type(self)._count_one(model, image).items():
                    for op, v in ops.items():
                        totals[mod][op] += v
        finally:
            model.train(was_training)
        n = len(images)
        self._counts = {mod: {op: v / n for op, v in ops.items()} for mod, ops in totals.items()}
        # every module is listed, with zeros for those that did no counted work
        self._modules = [name for name, _ in model.named_modules()]
        self._scale = 1.0

    def by_module_and_operator(self) -> dict[str, dict[str, float]]:
        """Module name ("" = the model) -> operator name -> count, for every module."""
        return {
            m: {op: v * self._scale for op, v in self._counts.get(m, {}).items()}
            for m in self._modules
        }

    def by_module(self) -> dict[str, float]:
        """Module name ("" = the model, "backbone", "backbone.bottom_up.res2", ...) -> count."""
        return {m: sum(ops.values()) for m, ops in self.by_module_and_operator().items()}

    def by_operator(self, module_name: str = "") -> dict[str, float]:
        """Operator name -> count within `module_name` (default: the whole model)."""
        if module_name not in self._modules:
            raise KeyError(f"module_name {module_name!r} is not a module of the model")
        return self.by_module_and_operator()[module_name]

    def total(self, module_name: str = "") -> float:
        """The count of `module_name` (default: the whole model)."""
        return sum(self.by_operator(module_name).values())


class FlopCountAnalysis(_OperatorCountAnalysis):
    """FLOPs of a model per module and operator (fvcore's FlopCountAnalysis interface).

    Args:
        model: a model taking Detectron2's ``list[dict]`` input; run in eval mode, then
            put back in its previous mode.
        inputs: dicts with an "image" (C, H, W) tensor; other keys are ignored. Each is run
            alone and the counts are averaged over them.
        per_mac: count a multiply-add as 1 (fvcore's and Detectron2's convention) instead
            of torch.utils.flop_counter's 2.

    The counts are raw numbers (not GFLOPs).
    """

    _count_one = staticmethod(_count_flops)

    def __init__(
        self, model: nn.Module, inputs: list[dict[str, Any]], *, per_mac: bool = False
    ) -> None:
        super().__init__(model, inputs)
        self._scale = 0.5 if per_mac else 1.0


class ActivationCountAnalysis(_OperatorCountAnalysis):
    """Activations (output elements of convolutions and matrix products) of a model per
    module and operator (fvcore's ActivationCountAnalysis interface); arguments as
    :class:`FlopCountAnalysis`. The counts are raw numbers of elements."""

    _count_one = staticmethod(_count_activations)


def flop_count_operators(
    model: nn.Module, inputs: list[dict[str, Any]], *, per_mac: bool = False
) -> dict[str, float]:
    """GFLOPs per operator type of one forward pass, averaged over `inputs`.

    Counts 2 FLOPs per multiply-add (torch.utils.flop_counter); Detectron2, through fvcore,
    counts 1, which ``per_mac=True`` gives (GMACs).

    Args:
        model: a model taking Detectron2's ``list[dict]`` input (run in eval mode).
        inputs: dicts with an "image" (C, H, W) tensor, each run alone.
        per_mac: count multiply-accumulates instead of FLOPs.

    Returns:
        operator name ("conv", "addmm", "mm", "bmm", ...) -> GFLOPs (or GMACs).
    """
    ops = FlopCountAnalysis(model, inputs, per_mac=per_mac).by_operator()
    return {op: v / 1e9 for op, v in ops.items()}


def activation_count_operators(model: nn.Module, inputs: list[dict[str, Any]]) -> dict[str, float]:
    """Mega-activations per operator type of one forward pass, averaged over `inputs`.

    Args:
        model: a model taking Detectron2's ``list[dict]`` input (run in eval mode).
        inputs: dicts with an "image" (C, H, W) tensor, each run alone.

    Returns:
        operator name ("conv", "addmm", "mm", "bmm", ...) -> millions of output elements.
    """
    ops = ActivationCountAnalysis(model, inputs).by_operator()
    return {op: v / 1e6 for op, v in ops.items()}


def parameter_count(model: nn.Module) -> dict[str, int]:
    """Number of parameter elements under every name prefix, as fvcore's parameter_count.

    Returns:
        prefix -> count: "" is the total, "backbone" every parameter under it, and each
        full parameter name ("backbone.stem.conv1.weight") its own size. A parameter
        shared by two modules is counted once.
    """
    counts: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        parts = name.split(".")
        for k in range(len(parts) + 1):
            counts[".".join(parts[:k])] += param.numel()
    return dict(counts)


def _format_count(n: float) -> str:
    """1234 -> "1.2K", 2_500_000 -> "2.5M" (fvcore's table style)."""
    for value, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= value:
            return f"{n / value:.1f}{suffix}"
    return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


def parameter_count_table(model: nn.Module, max_depth: int = 3) -> str:
    """A table of parameter counts per module, nested to `max_depth` levels.

    A module is listed with its total count; a parameter (a leaf) with its shape.
    The first row, "model", is the total.
    """
    from tabulate import tabulate

    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    counts = parameter_count(model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    rows = [["model", _format_count(counts.get("", 0))]]
    for name in counts:
        if name == "" or name.count(".") + 1 > max_depth:
            continue
        value = str(shapes[name]) if name in shapes else _format_count(counts[name])
        rows.append([name, value])
    # named_parameters visits prefixes in model order, so parents precede children
    return tabulate(rows, headers=["name", "#elements or shape"], tablefmt="pipe")
