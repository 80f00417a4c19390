"""A fixed table of 74 distinct colors for drawing instances, and random picks from it.

The table is Detectron2's (itself Detectron's palette without most greys). Colors are stored
RGB in [0, 1]; the functions return BGR by default, as Detectron2 does, because OpenCV
callers were its first users.
"""

from __future__ import annotations

import random

import numpy as np

__all__ = ["colormap", "random_color", "random_colors"]

# fmt: off
# (74, 3) RGB in [0, 1], one color per row.
_COLORS = np.array(
    [
        [0.000, 0.447, 0.741], [0.850, 0.325, 0.098], [0.929, 0.694, 0.125],
        [0.494, 0.184, 0.556], [0.466, 0.674, 0.188], [0.301, 0.745, 0.933],
        [0.635, 0.078, 0.184], [0.300, 0.300, 0.300], [0.600, 0.600, 0.600],
        [1.000, 0.000, 0.000], [1.000, 0.500, 0.000], [0.749, 0.749, 0.000],
        [0.000, 1.000, 0.000], [0.000, 0.000, 1.000], [0.667, 0.000, 1.000],
        [0.333, 0.333, 0.000], [0.333, 0.667, 0.000], [0.333, 1.000, 0.000],
        [0.667, 0.333, 0.000], [0.667, 0.667, 0.000], [0.667, 1.000, 0.000],
        [1.000, 0.333, 0.000], [1.000, 0.667, 0.000], [1.000, 1.000, 0.000],
        [0.000, 0.333, 0.500], [0.000, 0.667, 0.500], [0.000, 1.000, 0.500],
        [0.333, 0.000, 0.500], [0.333, 0.333, 0.500], [0.333, 0.667, 0.500],
        [0.333, 1.000, 0.500], [0.667, 0.000, 0.500], [0.667, 0.333, 0.500],
        [0.667, 0.667, 0.500], [0.667, 1.000, 0.500], [1.000, 0.000, 0.500],
        [1.000, 0.333, 0.500], [1.000, 0.667, 0.500], [1.000, 1.000, 0.500],
        [0.000, 0.333, 1.000], [0.000, 0.667, 1.000], [0.000, 1.000, 1.000],
        [0.333, 0.000, 1.000], [0.333, 0.333, 1.000], [0.333, 0.667, 1.000],
        [0.333, 1.000, 1.000], [0.667, 0.000, 1.000], [0.667, 0.333, 1.000],
        [0.667, 0.667, 1.000], [0.667, 1.000, 1.000], [1.000, 0.000, 1.000],
        [1.000, 0.333, 1.000], [1.000, 0.667, 1.000], [0.333, 0.000, 0.000],
        [0.500, 0.000, 0.000], [0.667, 0.000, 0.000], [0.833, 0.000, 0.000],
        [1.000, 0.000, 0.000], [0.000, 0.167, 0.000], [0.000, 0.333, 0.000],
        [0.000, 0.500, 0.000], [0.000, 0.667, 0.000], [0.000, 0.833, 0.000],
        [0.000, 1.000, 0.000], [0.000, 0.000, 0.167], [0.000, 0.000, 0.333],
        [0.000, 0.000, 0.500], [0.000, 0.000, 0.667], [0.000, 0.000, 0.833],
        [0.000, 0.000, 1.000], [0.000, 0.000, 0.000], [0.143, 0.143, 0.143],
        [0.857, 0.857, 0.857], [1.000, 1.000, 1.000],
    ],
    dtype=np.float32,
)
# fmt: on


def _check_maximum(maximum: int) -> None:
    if maximum not in (255, 1):
        raise ValueError(f"maximum must be 255 or 1, got {maximum!r}")


def colormap(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """Return the whole color table.

    Args:
        rgb: channel order RGB if True, else BGR.
        maximum: 255 for values in [0, 255], 1 for values in [0, 1].

    Returns:
        (74, 3) float32 array of colors.
    """
    _check_maximum(maximum)
    table = _COLORS * maximum
    return table if rgb else table[:, ::-1]


def random_color(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """Return one color drawn uniformly from the table (numpy's global generator).

    Args:
        rgb: channel order RGB if True, else BGR.
        maximum: 255 for values in [0, 255], 1 for values in [0, 1].

    Returns:
        (3,) float32 array.
    """
    _check_maximum(maximum)
    color = _COLORS[np.random.randint(0, len(_COLORS))] * maximum
    return color if rgb else color[::-1]


def random_colors(N: int, rgb: bool = False, maximum: int = 255) -> list[np.ndarray]:
    """Return N different colors drawn from the table without replacement.

    Uses Python's `random` module, as Detectron2 does.

    Args:
        N: number of colors, 0 <= N <= 74.
        rgb: channel order RGB if True, else BGR.
        maximum: 255 for values in [0, 255], 1 for values in [0, 1].

    Returns:
        list of N (3,) float32 arrays.
    """
    _check_maximum(maximum)
    if not 0 <= N <= len(_COLORS):
        raise ValueError(f"N must be in [0, {len(_COLORS)}] (the table size), got {N}")
    picks = random.sample(range(len(_COLORS)), N)
    colors = [_COLORS[i] * maximum for i in picks]
    return colors if rgb else [c[::-1] for c in colors]
