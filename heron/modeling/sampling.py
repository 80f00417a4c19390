"""Random subsampling of labelled predictions into a fixed-size, balanced minibatch."""

from __future__ import annotations

import torch
from torch import Tensor

from heron.layers.wrappers import nonzero_tuple

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: Tensor,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw at most ``num_samples`` indices, a ``positive_fraction`` of them foreground.

    If there are too few positives, negatives fill the rest; if there are too few of
    both, fewer are returned.

    Args:
        labels: (N,) int labels: -1 ignore, ``bg_label`` background, anything else foreground.
        num_samples: total number of samples wanted.
        positive_fraction: wanted fraction of positives, in [0, 1].
        bg_label: the background label.
        generator: random generator for the draw (default: torch's global one).

    Returns:
        pos_idx, neg_idx: (P,) and (Q,) int64 indices into labels, P + Q <= num_samples.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    positive = nonzero_tuple((labels != -1) & (labels != bg_label))[0]
    negative = nonzero_tuple(labels == bg_label)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm1 = torch.randperm(positive.numel(), device=positive.device, generator=generator)[:num_pos]
    perm2 = torch.randperm(negative.numel(), device=negative.device, generator=generator)[:num_neg]
    return positive[perm1], negative[perm2]
