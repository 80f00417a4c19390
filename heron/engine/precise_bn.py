"""Precise BatchNorm statistics (fvcore's ``get_bn_modules`` and ``update_bn_stats``).

During training, BatchNorm's running mean and variance are an exponential moving average
over batches produced by weights that kept changing. ``update_bn_stats`` replaces them with
the plain average over ``num_iters`` batches run through the current, fixed weights: the
statistics the model would have if it were trained no further.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["BN_MODULE_TYPES", "get_bn_modules", "update_bn_stats"]

logger = logging.getLogger(__name__)

BN_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)


def get_bn_modules(model: nn.Module) -> list[nn.Module]:
    """Return the BatchNorm modules of ``model`` that are in training mode.

    Only these update their running statistics in a forward pass; modules in eval mode (or
    frozen BN, which is not a BatchNorm subclass) keep theirs.
    """
    return [m for m in model.modules() if m.training and isinstance(m, BN_MODULE_TYPES)]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    data_loader: Iterable[Any],
    num_iters: int = 200,
    progress: str | None = None,
) -> None:
    """Set the running statistics of the model's training-mode BN layers to exact averages.

    Runs ``model(batch)`` on the first ``num_iters`` batches of ``data_loader``. Each BN
    layer's ``running_mean`` becomes the mean over batches of the batch means, and
    ``running_var`` the mean over batches of the (unbiased) batch variances, as fvcore does.
    With batches of equal size the first is the exact mean of all the data the layer saw.

    Args:
        model: the model, with the BN layers to update in training mode. Other side effects
            of its forward pass (e.g. in other stateful modules) are not undone.
        data_loader: an iterable of model inputs; it must yield at least ``num_iters`` items.
        num_iters: how many batches to average over.
        progress: None, or "tqdm" to show a progress bar.

    Raises:
        ValueError: ``num_iters`` < 1, ``progress`` is unknown, or ``data_loader`` yields
            fewer than ``num_iters`` batches (the statistics are then left unchanged).
    """
    if int(num_iters) < 1:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters}")
    if progress not in (None, "tqdm"):
        raise ValueError(f"progress must be None or 'tqdm', got {progress!r}")
    num_iters = int(num_iters)
    bn_layers = get_bn_modules(model)
    if not bn_layers:
        return

    # BN's update is running = (1 - momentum) * running + momentum * batch_stat; momentum 1
    # makes the running statistics equal the last batch's, which are then averaged here.
    momentum_actual = [bn.momentum for bn in bn_layers]
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bn_layers]
    for bn in bn_layers:
        bn.momentum = 1.0
    # running_var here is an average of per-batch variances, not the variance of all data.
    mean_sums = [torch.zeros_like(bn.running_mean) for bn in bn_layers]
    var_sums = [torch.zeros_like(bn.running_var) for bn in bn_layers]

    bar = None
    if progress == "tqdm":
        from tqdm import tqdm

        bar = tqdm(total=num_iters, desc="precise BN")
    num_batches = 0
    try:
        for inputs in itertools.islice(data_loader, num_iters):
            model(inputs)
            num_batches += 1
            for i, bn in enumerate(bn_layers):
                # incremental mean: avg_k = avg_{k-1} + (x_k - avg_{k-1}) / k
                mean_sums[i] += (bn.running_mean - mean_sums[i]) / num_batches
                var_sums[i] += (bn.running_var - var_sums[i]) / num_batches
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for bn, momentum in zip(bn_layers, momentum_actual):
            bn.momentum = momentum

    if num_batches != num_iters:
        for bn, (mean, var) in zip(bn_layers, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        raise ValueError(
            f"update_bn_stats needs {num_iters} batches from data_loader, but it stopped "
            f"after {num_batches}"
        )
    for bn, mean, var in zip(bn_layers, mean_sums, var_sums):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
