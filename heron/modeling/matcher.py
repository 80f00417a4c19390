"""`Matcher`: assign each prediction (anchor, proposal) a ground-truth box and a label."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from heron.layers.wrappers import nonzero_tuple

__all__ = ["Matcher", "label_by_thresholds", "set_low_quality_matches_"]


def label_by_thresholds(
    matched_vals: Tensor, thresholds: Sequence[float], labels: Sequence[int]
) -> Tensor:
    """Label each value by the half-open interval [t_i, t_{i+1}) it falls in.

    Args:
        matched_vals: (N,) best match quality of each prediction.
        thresholds: increasing interval bounds, starting with -inf and ending with +inf.
        labels: one label in {-1, 0, 1} per interval (len(thresholds) - 1 of them).

    Returns:
        (N,) int8 labels.
    """
    match_labels = torch.ones_like(matched_vals, dtype=torch.int8)
    for label, low, high in zip(labels, thresholds[:-1], thresholds[1:]):
        in_range = (matched_vals >= low) & (matched_vals < high)
        match_labels[in_range] = label
    return match_labels


def set_low_quality_matches_(match_labels: Tensor, match_quality_matrix: Tensor) -> None:
    """Mark as positive, in place, every prediction that is some gt's best match.

    For each ground truth, all predictions tied for its highest quality get label 1,
    even when that quality is below the positive threshold (Faster R-CNN, Sec. 3.1.2).
    Their matched gt stays the one chosen by the column-wise max, as in Detectron2.
    """
    highest_quality_per_gt, _ = match_quality_matrix.max(dim=1)  # (M,)
    _, pred_idxs = nonzero_tuple(match_quality_matrix == highest_quality_per_gt[:, None])
    match_labels[pred_idxs] = 1


class Matcher:
    """Match predictions to ground truth by a quality matrix such as IoU.

    Each prediction gets its best ground truth and a label: 1 (positive), 0 (negative)
    or -1 (ignore), from the interval its best quality falls into.
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool = False,
    ) -> None:
        """
        Args:
            thresholds: increasing quality bounds splitting [-inf, inf) into intervals,
                e.g. [0.3, 0.7].
            labels: one label in {-1, 0, 1} per interval, e.g. [0, -1, 1].
            allow_low_quality_matches: also make each gt's best prediction(s) positive.
        """
        thresholds = list(thresholds)
        if thresholds and thresholds[0] < 0:
            raise ValueError(f"Matcher thresholds must be >= 0, got {thresholds}")
        thresholds = [-math.inf, *thresholds, math.inf]
        if any(lo > hi for lo, hi in pairwise(thresholds)):
            raise ValueError(f"Matcher thresholds must be increasing, got {thresholds[1:-1]}")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher labels must be -1, 0 or 1, got {list(labels)}")
        if len(labels) != len(thresholds) - 1:
            raise ValueError(
                f"Matcher needs {len(thresholds) - 1} labels for thresholds "
                f"{thresholds[1:-1]}, got {len(labels)}"
            )
        self.thresholds = thresholds
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            match_quality_matrix: (M, N) quality (e.g. IoU) of M gt vs N predictions, >= 0.

        Returns:
            matches: (N,) int64, index in [0, M) of each prediction's best gt (0 if M == 0).
            match_labels: (N,) int8 label of each prediction.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                f"match_quality_matrix must be (M, N), got shape {tuple(match_quality_matrix.shape)}"
            )
        if match_quality_matrix.numel() == 0:
            num_preds = match_quality_matrix.shape[1]
            matches = match_quality_matrix.new_full((num_preds,), 0, dtype=torch.int64)
            # No gt: every prediction gets the label of the lowest interval (background).
            labels = match_quality_matrix.new_full((num_preds,), self.labels[0], dtype=torch.int8)
            return matches, labels
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = label_by_thresholds(matched_vals, self.thresholds, self.labels)
        if self.allow_low_quality_matches:
            set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels
