"""RegNet and AnyNet backbones (Detectron2's `regnet.py`, from the pycls design space papers).

A network is a stem followed by stages ``s1`` .. ``sK``; every stage halves the resolution
with its first block. Module names (``stem.conv``, ``s1.b1.f.a_bn``, ``s2.b1.proj``, ...)
are Detectron2's, which are pycls's, so both projects' checkpoints load unchanged.

Blocks take six positional arguments ``(w_in, w_out, stride, norm, activation_class,
params)``; ``params`` holds ``bot_mul`` (bottleneck ratio), ``group_w`` (channels per
group) and ``se_r`` (squeeze-excitation ratio). Stems take ``(w_in, w_out, norm,
activation_class)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor, nn

from heron.layers.batch_norm import get_norm
from heron.layers.blocks import CNNBlockBase
from heron.modeling.backbone.backbone import Backbone

__all__ = [
    "SE",
    "AnyNet",
    "AnyStage",
    "BasicTransform",
    "BottleneckTransform",
    "RegNet",
    "ResBasicBlock",
    "ResBottleneckBlock",
    "ResStem",
    "SimpleStem",
    "VanillaBlock",
    "adjust_block_compatibility",
    "generate_regnet_parameters",
]

Norm = str | Callable[[int], nn.Module] | None
ActivationClass = Callable[[], nn.Module]


def _conv(
    w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1, bias: bool = False
) -> nn.Conv2d:
    """A k x k convolution padded to keep the size at stride 1 (k odd, as pycls requires)."""
    assert k % 2 == 1, "only odd kernels keep 'same' padding symmetric"
    return nn.Conv2d(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)


def _mark_final_bn(norm: nn.Module | None) -> None:
    # pycls flags the last norm of a residual branch (used by its zero-init option);
    # Detectron2 keeps the flag, so we set it too.
    if norm is not None:
        norm.final_bn = True


def _init_weights(m: nn.Module) -> None:
    """pycls's ResNet-style init: conv ~ N(0, 2 / (k * k * out)), BN = identity, FC ~ N(0, 0.01)."""
    if isinstance(m, nn.Conv2d):
        # fan_out ignores groups, as in pycls and Detectron2.
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.zeros_(m.bias)


class _Sequence:
    """Mixin: forward runs the registered children in order (None children are skipped)."""

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class ResStem(_Sequence, CNNBlockBase):
    """ResNet stem: 7x7 stride-2 conv, norm, activation, 3x3 stride-2 max-pool (stride 4).

    forward: (N, w_in, H, W) -> (N, w_out, H / 4, W / 4).
    """

    def __init__(self, w_in: int, w_out: int, norm: Norm, activation_class: ActivationClass):
        super().__init__(w_in, w_out, 4)
        self.conv = _conv(w_in, w_out, 7, stride=2)
        self.bn = get_norm(norm, w_out)
        self.af = activation_class()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)


class SimpleStem(_Sequence, CNNBlockBase):
    """RegNet stem: 3x3 stride-2 conv, norm, activation (stride 2).

    forward: (N, w_in, H, W) -> (N, w_out, H / 2, W / 2).
    """

    def __init__(self, w_in: int, w_out: int, norm: Norm, activation_class: ActivationClass):
        super().__init__(w_in, w_out, 2)
        self.conv = _conv(w_in, w_out, 3, stride=2)
        self.bn = get_norm(norm, w_out)
        self.af = activation_class()


class SE(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their global mean.

    The gate is global average pool, 1x1 conv to ``w_se``, activation, 1x1 conv back to
    ``w_in``, sigmoid. forward: (N, w_in, H, W) -> (N, w_in, H, W).
    """

    def __init__(self, w_in: int, w_se: int, activation_class: ActivationClass) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.f_ex = nn.Sequential(
            _conv(w_in, w_se, 1, bias=True),
            activation_class(),
            _conv(w_se, w_in, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.f_ex(self.avg_pool(x))


class VanillaBlock(_Sequence, CNNBlockBase):
    """Two [3x3 conv, norm, activation] layers without a residual connection."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: Norm,
        activation_class: ActivationClass,
        _params: dict[str, Any],
    ) -> None:
        super().__init__(w_in, w_out, stride)
        self.a = _conv(w_in, w_out, 3, stride=stride)
        self.a_bn = get_norm(norm, w_out)
        self.a_af = activation_class()
        self.b = _conv(w_out, w_out, 3)
        self.b_bn = get_norm(norm, w_out)
        self.b_af = activation_class()


class BasicTransform(_Sequence, nn.Module):
    """Residual branch of `ResBasicBlock`: 3x3 conv, norm, activation, 3x3 conv, norm."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: Norm,
        activation_class: ActivationClass,
        _params: dict[str, Any],
    ) -> None:
        super().__init__()
        self.a = _conv(w_in, w_out, 3, stride=stride)
        self.a_bn = get_norm(norm, w_out)
        self.a_af = activation_class()
        self.b = _conv(w_out, w_out, 3)
        self.b_bn = get_norm(norm, w_out)
        _mark_final_bn(self.b_bn)


class BottleneckTransform(_Sequence, nn.Module):
    """Residual branch of `ResBottleneckBlock`: 1x1, grouped 3x3 (then SE if any), 1x1.

    The bottleneck has ``round(w_out * bot_mul)`` channels split into groups of ``group_w``;
    the SE gate has ``round(w_in * se_r)`` channels (none when that is 0).
    """

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: Norm,
        activation_class: ActivationClass,
        params: dict[str, Any],
    ) -> None:
        super().__init__()
        w_b = round(w_out * params["bot_mul"])
        w_se = round(w_in * params["se_r"])
        groups = w_b // params["group_w"]
        self.a = _conv(w_in, w_b, 1)
        self.a_bn = get_norm(norm, w_b)
        self.a_af = activation_class()
        self.b = _conv(w_b, w_b, 3, stride=stride, groups=groups)
        self.b_bn = get_norm(norm, w_b)
        self.b_af = activation_class()
        self.se = SE(w_b, w_se, activation_class) if w_se else None
        self.c = _conv(w_b, w_out, 1)
        self.c_bn = get_norm(norm, w_out)
        _mark_final_bn(self.c_bn)


class _ResidualBlock(CNNBlockBase):
    """activation(shortcut(x) + f(x)); the shortcut is a 1x1 projection + norm when the
    width or resolution changes, else the identity."""

    transform_class: type[nn.Module]

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: Norm,
        activation_class: ActivationClass,
        params: dict[str, Any],
    ) -> None:
        super().__init__(w_in, w_out, stride)
        self.proj, self.bn = None, None
        if w_in != w_out or stride != 1:
            self.proj = _conv(w_in, w_out, 1, stride=stride)
            self.bn = get_norm(norm, w_out)
        self.f = self.transform_class(w_in, w_out, stride, norm, activation_class, params)
        self.af = activation_class()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.proj is not None:
            shortcut = self.proj(x)
            if self.bn is not None:
                shortcut = self.bn(shortcut)
        return self.af(shortcut + self.f(x))


class ResBasicBlock(_ResidualBlock):
    """Residual block x + f(x) with f a `BasicTransform`."""

    transform_class = BasicTransform


class ResBottleneckBlock(_ResidualBlock):
    """Residual block x + f(x) with f a `BottleneckTransform` (RegNetX/Y's block)."""

    transform_class = BottleneckTransform


class AnyStage(nn.Module):
    """``d`` blocks named ``b1`` .. ``bd`` of one width; only the first has the stride."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        d: int,
        block_class: Callable[..., CNNBlockBase],
        norm: Norm,
        activation_class: ActivationClass,
        params: dict[str, Any],
    ) -> None:
        super().__init__()
        for i in range(d):
            block = block_class(w_in, w_out, stride, norm, activation_class, params)
            self.add_module(f"b{i + 1}", block)
            stride, w_in = 1, w_out

    def forward(self, x: Tensor) -> Tensor:
        for block in self.children():
            x = block(x)
        return x


class AnyNet(Backbone):
    """A stem and stages ``s1`` .. ``sK`` whose depth, width, stride, bottleneck ratio and
    group width are given per stage (the AnyNet design space of "Designing Network Design
    Spaces", Radosavovic et al. 2020).

    Args:
        stem_class: called as ``stem_class(3, stem_width, norm, activation_class)``.
        stem_width: output channels of the stem.
        block_class: called as ``block_class(w_in, w_out, stride, norm, activation_class,
            params)`` for every block.
        depths: blocks per stage.
        widths: output channels per stage.
        group_widths: channels per group of the grouped convolution, per stage.
        strides: stride of each stage's first block.
        bottleneck_ratios: bottleneck channels / output channels, per stage.
        se_ratio: squeeze-excitation channels / block input channels (0: no SE).
        activation_class: called with no arguments to build each activation module.
        freeze_at: number of leading parts to freeze (1: the stem, 2: stem and s1, ...).
        norm: normalization of every convolution, as for `get_norm`.
        out_features: names among ``"stem"``, ``"s1"``, ... to return; None: the last stage.
    """

    def __init__(
        self,
        *,
        stem_class: Callable[..., CNNBlockBase],
        stem_width: int,
        block_class: Callable[..., CNNBlockBase],
        depths: list[int],
        widths: list[int],
        group_widths: list[int],
        strides: list[int],
        bottleneck_ratios: list[float],
        se_ratio: float,
        activation_class: ActivationClass,
        freeze_at: int = 0,
        norm: Norm = "BN",
        out_features: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        per_stage = [depths, widths, strides, bottleneck_ratios, group_widths]
        if len({len(v) for v in per_stage}) != 1:
            raise ValueError(
                "AnyNet: depths, widths, strides, bottleneck_ratios and group_widths must have "
                f"one entry per stage, got lengths {[len(v) for v in per_stage]}"
            )
        self.stem = stem_class(3, stem_width, norm, activation_class)

        current_stride = self.stem.stride
        self._out_feature_strides = {"stem": current_stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        self.stages_and_names: list[tuple[AnyStage, str]] = []
        name = "stem"
        prev_w = stem_width
        for i, (d, w, s, b, g) in enumerate(zip(*per_stage)):
            params = {"bot_mul": b, "group_w": g, "se_r": se_ratio}
            stage = AnyStage(prev_w, w, s, d, block_class, norm, activation_class, params)
            name = f"s{i + 1}"
            self.add_module(name, stage)
            self.stages_and_names.append((stage, name))
            blocks = list(stage.children())
            current_stride = int(current_stride * np.prod([blk.stride for blk in blocks]))
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = blocks[-1].out_channels
            prev_w = w

        self.apply(_init_weights)

        if out_features is None:
            out_features = [name]
        if len(out_features) == 0:
            raise ValueError("AnyNet: out_features must name at least one output, got []")
        known = [n for n, _ in self.named_children()]
        for feature in out_features:
            if feature not in known:
                raise ValueError(
                    f"AnyNet: out_features entry {feature!r} is not one of {', '.join(known)}"
                )
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the stem and stages on an image batch.

        Args:
            x: (N, 3, H, W) images.

        Returns:
            the features named in ``out_features``, each (N, C, H / stride, W / stride).
        """
        if x.dim() != 4:
            raise ValueError(f"AnyNet: input must be (N, C, H, W), got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for stage, name in self.stages_and_names:
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> AnyNet:
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages.

        Frozen blocks stop requiring gradients and their BatchNorms become
        FrozenBatchNorm2d. freeze_at=0 freezes nothing. Returns self.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, (stage, _) in enumerate(self.stages_and_names, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    block.freeze()
        return self


def adjust_block_compatibility(
    ws: list[int], bs: list[float], gs: list[int]
) -> tuple[list[int], list[float], list[int]]:
    """Round widths so each bottleneck width is a whole number of groups.

    A group width larger than the bottleneck shrinks to it; the bottleneck width
    ``w * b`` is then rounded to the nearest multiple of the group width (or of
    lcm(group width, b) when b > 1), and the block width recomputed from it.

    Args:
        ws: block widths per stage.
        bs: bottleneck ratios per stage.
        gs: group widths per stage.

    Returns:
        the adjusted (ws, bs, gs).
    """
    if not len(ws) == len(bs) == len(gs):
        raise ValueError(
            f"adjust_block_compatibility: ws, bs, gs differ in length ({len(ws)}, {len(bs)}, "
            f"{len(gs)})"
        )
    if not all(w > 0 and b > 0 and g > 0 for w, b, g in zip(ws, bs, gs)):
        raise ValueError(
            f"adjust_block_compatibility: widths, ratios and group widths must be > 0, got "
            f"ws={ws}, bs={bs}, gs={gs}"
        )
    vs = [int(max(1, w * b)) for w, b in zip(ws, bs)]
    gs = [int(min(g, v)) for g, v in zip(gs, vs)]
    ms = [int(np.lcm(g, b)) if b > 1 else g for g, b in zip(gs, bs)]
    vs = [max(m, int(round(v / m) * m)) for v, m in zip(vs, ms)]
    ws = [int(v / b) for v, b in zip(vs, bs)]
    assert all(w * b % g == 0 for w, b, g in zip(ws, bs, gs))
    return ws, bs, gs


def generate_regnet_parameters(
    w_a: float, w_0: int, w_m: float, d: int, q: int = 8
) -> tuple[list[int], list[int], int, float, list[int], list[float]]:
    """Per-stage widths and depths of a RegNet from its linear width parameters.

    Block j gets the continuous width ``u_j = w_0 + w_a * j``, snapped to
    ``w_0 * w_m ** round(log(u_j / w_0) / log(w_m))`` and then to a multiple of ``q``;
    consecutive blocks of equal width form a stage ("Designing Network Design Spaces",
    Section 3.3).

    Args:
        w_a: slope of the linear widths (>= 0).
        w_0: initial width (> 0, a multiple of q).
        w_m: width multiplier between stages (> 1).
        d: total number of blocks.
        q: quantum of the widths.

    Returns:
        (ws, ds, num_stages, total_stages, ws_all, ws_cont): stage widths and depths, the
        number of stages, the number of stages the quantization allows (as a float, as in
        Detectron2), and the quantized and continuous width of every block.
    """
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(
            "generate_regnet_parameters: need w_a >= 0, w_0 > 0, w_m > 1 and w_0 % q == 0, "
            f"got w_a={w_a}, w_0={w_0}, w_m={w_m}, q={q}"
        )
    ws_cont = np.arange(d) * w_a + w_0
    ks = np.round(np.log(ws_cont / w_0) / np.log(w_m))
    ws_all = np.round(w_0 * np.power(w_m, ks) / q).astype(int) * q
    # Widths grow with j, so unique() keeps the stages in order.
    ws, ds = np.unique(ws_all, return_counts=True)
    num_stages, total_stages = len(ws), ks.max() + 1
    return ws.tolist(), ds.tolist(), num_stages, total_stages, ws_all.tolist(), ws_cont.tolist()


def _default_activation_class() -> nn.Module:
    return nn.ReLU(inplace=True)


class RegNet(AnyNet):
    """A RegNet: an `AnyNet` whose stages come from the linear width rule.

    Args:
        depth: total number of blocks.
        w_a, w_0, w_m: width parameters, see `generate_regnet_parameters`.
        group_width: channels per group of the grouped convolution (all stages).
        stride: stride of every stage's first block.
        bottleneck_ratio: bottleneck channels / output channels (all stages).
        se_ratio: squeeze-excitation channels / block input channels (0: no SE; RegNetY
            uses 0.25).
        activation_class: builds each activation; None: ``ReLU(inplace=True)``.
        stem_class, stem_width, block_class, freeze_at, norm, out_features: see `AnyNet`.

    Example (RegNetX-4GF as in Detectron2's new baselines):
        ``RegNet(stem_class=SimpleStem, stem_width=32, block_class=ResBottleneckBlock,
        depth=23, w_a=38.65, w_0=96, w_m=2.43, group_width=40, norm="FrozenBN",
        out_features=["s1", "s2", "s3", "s4"])``
    """

    def __init__(
        self,
        *,
        stem_class: Callable[..., CNNBlockBase],
        stem_width: int,
        block_class: Callable[..., CNNBlockBase],
        depth: int,
        w_a: float,
        w_0: int,
        w_m: float,
        group_width: int,
        stride: int = 2,
        bottleneck_ratio: float = 1.0,
        se_ratio: float = 0.0,
        activation_class: ActivationClass | None = None,
        freeze_at: int = 0,
        norm: Norm = "BN",
        out_features: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        ws, ds = generate_regnet_parameters(w_a, w_0, w_m, depth)[0:2]
        ss = [stride for _ in ws]
        bs = [bottleneck_ratio for _ in ws]
        gs = [group_width for _ in ws]
        ws, bs, gs = adjust_block_compatibility(ws, bs, gs)
        super().__init__(
            stem_class=stem_class,
            stem_width=stem_width,
            block_class=block_class,
            depths=ds,
            widths=ws,
            strides=ss,
            group_widths=gs,
            bottleneck_ratios=bs,
            se_ratio=se_ratio,
            activation_class=(
                _default_activation_class if activation_class is None else activation_class
            ),
            freeze_at=freeze_at,
            norm=norm,
            out_features=out_features,
        )
