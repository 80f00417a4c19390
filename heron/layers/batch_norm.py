"""Normalization layers and `get_norm`, which builds one from a config name.

`FrozenBatchNorm2d` keeps Detectron2's buffer names (`weight`, `bias`, `running_mean`,
`running_var`) so model-zoo backbones load without renaming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from heron.layers.wrappers import BatchNorm2d

__all__ = [
    "CycleBatchNormList",
    "FrozenBatchNorm2d",
    "LayerNorm",
    "NaiveSyncBatchNorm",
    "get_norm",
]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    Computes `(x - running_mean) / sqrt(running_var + eps) * weight + bias` per channel.
    The buffers start as the identity (`running_var = 1 - eps`, so the denominator is
    exactly 1). Caffe2 backbones store only `weight` and `bias` (statistics already folded
    in); for those, the running statistics stay at the identity.

    forward: (N, C, H, W) -> (N, C, H, W).
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            # F.batch_norm's backward would also compute gradients for the (frozen) weight
            # and bias; the explicit scale/shift avoids that memory.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
            shift = shift.reshape(1, -1, 1, 1).to(x.dtype)
            return x * scale + shift
        # Without gradients F.batch_norm is a single fused op.
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Checkpoints before version 2 carry no running statistics: keep the identity.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        # A BatchNorm2d checkpoint has a batch counter, which means nothing once frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __repr__(self) -> str:
        return f"FrozenBatchNorm2d(num_features={self.num_features}, eps={self.eps})"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d / SyncBatchNorm in `module` with a FrozenBatchNorm2d.

        Affine parameters and running statistics are copied (on the same device and
        dtype). Children are replaced in place.

        Returns:
            a new FrozenBatchNorm2d if `module` itself is a batch norm, else `module`.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return cls._from_batchnorm(module)
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module

    @classmethod
    def _from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        res = cls(bn.num_features, eps=bn.eps)
        tensors = [*bn.parameters(), *bn.buffers()]
        reference = next((t for t in tensors if t.is_floating_point()), None)
        if reference is not None:
            res = res.to(device=reference.device, dtype=reference.dtype)
        if bn.affine:
            res.weight = bn.weight.detach().clone()
            res.bias = bn.bias.detach().clone()
        if bn.running_mean is not None:
            res.running_mean = bn.running_mean.detach().clone()
            res.running_var = bn.running_var.detach().clone()
        return res


class LayerNorm(nn.Module):
    """Layer normalization over the channel dimension of (N, C, H, W) inputs.

    Each spatial position is normalized by the mean and (biased) variance of its C
    values, then scaled and shifted per channel. `nn.LayerNorm` would normalize over the
    trailing dimensions instead.

    Args:
        normalized_shape: number of channels C.
        eps: added to the variance.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _AllReduceSum(torch.autograd.Function):
    """Sum a tensor over all ranks; the gradient is summed over all ranks too."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _differentiable_all_reduce(x: Tensor) -> Tensor:
    """Sum `x` over all ranks, keeping it differentiable."""
    return _AllReduceSum.apply(x)


def _world_size() -> int:
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


class NaiveSyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged across ranks by all-reduce.

    Each rank computes the per-channel mean and mean of squares of its own batch, these
    are all-reduced, and the variance is derived from the averages. With one rank, or in
    evaluation, it is a plain BatchNorm2d.

    - `stats_mode=""`: every rank has equal weight, which gives the true statistics of
      all samples when all ranks have the same (N, H, W). A rank with N == 0 is an error.
    - `stats_mode="N"`: ranks are weighted by their batch size N (true statistics when
      all ranks share (H, W)); ranks with N == 0 are allowed, and when the whole batch
      is empty the running statistics are left unchanged.

    Args:
        *args, **kwargs: as for `torch.nn.BatchNorm2d`.
        stats_mode: "" or "N", see above.
    """

    def __init__(self, *args, stats_mode: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if stats_mode not in ("", "N"):
            raise ValueError(
                f'NaiveSyncBatchNorm: stats_mode must be "" or "N", got {stats_mode!r}'
            )
        self._stats_mode = stats_mode

    def forward(self, input: Tensor) -> Tensor:
        if _world_size() == 1 or not self.training:
            return super().forward(input)
        batch_size, channels = input.shape[0], input.shape[1]
        half_input = input.dtype == torch.float16
        if half_input:
            input = input.float()  # float16 is too coarse for these reductions
        mean = torch.mean(input, dim=[0, 2, 3])
        meansqr = torch.mean(input * input, dim=[0, 2, 3])

        if self._stats_mode == "":
            if batch_size == 0:
                raise ValueError(
                    'NaiveSyncBatchNorm(stats_mode="") does not support an empty batch; '
                    'use stats_mode="N"'
                )
            vec = torch.cat([mean, meansqr], dim=0)
            vec = _differentiable_all_reduce(vec) * (1.0 / _world_size())
            mean, meansqr = torch.split(vec, channels)
            momentum = self.momentum
        else:
            if batch_size == 0:
                vec = torch.zeros([2 * channels + 1], device=mean.device, dtype=mean.dtype)
                vec = vec + input.sum()  # keeps the graph connected to the empty input
            else:
                ones = torch.ones([1], device=mean.device, dtype=mean.dtype)
                vec = torch.cat([mean, meansqr, ones], dim=0)
            vec = _differentiable_all_reduce(vec * batch_size)
            total_batch = vec[-1].detach()
            # Zero momentum (no running-stat update) when no rank had any sample.
            momentum = total_batch.clamp(max=1) * self.momentum
            mean, meansqr, _ = torch.split(vec / total_batch.clamp(min=1), channels)

        var = meansqr - mean * mean
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        shift = self.bias - mean * scale
        scale = scale.reshape(1, -1, 1, 1)
        shift = shift.reshape(1, -1, 1, 1)

        self.running_mean += momentum * (mean.detach() - self.running_mean)
        self.running_var += momentum * (var.detach() - self.running_var)
        ret = input * scale + shift
        return ret.half() if half_input else ret


class CycleBatchNormList(nn.ModuleList):
    """Several BatchNorm layers used in turn, one per forward call, sharing one affine.

    For a BatchNorm applied to several input domains (e.g. several feature levels) that
    each need their own test-time statistics. The caller must call it a multiple of
    `length` times per iteration, in the same domain order, or the statistics mix.

    Args:
        length: number of BatchNorm layers to cycle through.
        bn_class: the BatchNorm class; built with `affine=False`.
        **kwargs: arguments of `bn_class` (e.g. `num_features`); `affine` (default True)
            decides whether the shared `weight` and `bias` parameters exist.
    """

    def __init__(self, length: int, bn_class: type[nn.Module] = nn.BatchNorm2d, **kwargs) -> None:
        affine = kwargs.pop("affine", True)
        super().__init__([bn_class(**kwargs, affine=False) for _ in range(length)])
        self._affine = affine
        if affine:
            channels = self[0].num_features
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        self._pos = 0

    def forward(self, x: Tensor) -> Tensor:
        ret = self[self._pos](x)
        self._pos = (self._pos + 1) % len(self)
        if self._affine:
            return ret * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        return ret

    def extra_repr(self) -> str:
        return f"affine={self._affine}"


_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "BN": BatchNorm2d,
    "SyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
    "nnSyncBN": nn.SyncBatchNorm,
    "naiveSyncBN": NaiveSyncBatchNorm,
    # stats_mode "N" tolerates ranks with empty batches.
    "naiveSyncBN_N": lambda channels: NaiveSyncBatchNorm(channels, stats_mode="N"),
    "LN": lambda channels: LayerNorm(channels),
}


def get_norm(norm: str | Callable[[int], nn.Module] | None, out_channels: int) -> nn.Module | None:
    """Build a normalization layer for `out_channels` channels.

    Args:
        norm: None or "" for no normalization; one of "BN", "SyncBN", "FrozenBN", "GN"
            (32 groups), "LN" (channel-wise `LayerNorm`), "nnSyncBN", "naiveSyncBN",
            "naiveSyncBN_N"; or a callable that takes the channel count and returns a module.
        out_channels: number of channels to normalize.

    Returns:
        the normalization module, or None.
    """
    if norm is None:
        return None
    if isinstance(norm, str):
        if len(norm) == 0:
            return None
        if norm not in _NORMS:
            raise KeyError(f"get_norm: unknown norm {norm!r}; known names: {', '.join(_NORMS)}")
        norm = _NORMS[norm]
    elif not callable(norm):
        raise TypeError(
            f"get_norm: norm must be a str, a callable or None, got {type(norm).__name__}"
        )
    return norm(out_channels)
