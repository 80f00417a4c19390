"""Index samplers for training (infinite streams) and inference (finite shards).

Every sampler here is rank-aware: training samplers draw one infinite index sequence,
identical on all ranks because they share a seed, and rank ``r`` of ``W`` takes the
elements at positions ``r, r + W, r + 2W, ...``. The inference sampler gives each rank a
contiguous slice of ``range(size)`` instead.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data.sampler import Sampler

from heron.utils import comm

__all__ = [
    "InferenceSampler",
    "RandomSubsetTrainingSampler",
    "RepeatFactorTrainingSampler",
    "TrainingSampler",
]

logger = logging.getLogger(__name__)


def _check_size(size: Any, *, allow_zero: bool) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}: {size!r}")
    low = 0 if allow_zero else 1
    if size < low:
        raise ValueError(f"size must be >= {low}, got {size}")
    return size


def _resolve_seed(seed: int | None) -> int:
    # All ranks must agree on the seed, otherwise their shards of the stream overlap.
    return int(comm.shared_random_seed()) if seed is None else int(seed)


class TrainingSampler(Sampler):
    """Yields an endless stream of dataset indices, sharded across ranks.

    The full stream is a concatenation of epochs, each ``range(size)`` or a random
    permutation of it. Rank ``r`` of ``W`` yields stream positions ``r, r + W, ...``, so the
    ranks together cover each epoch once. Use it with a batched loader that stops by
    iteration count, not by exhausting the sampler.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None) -> None:
        """
        Args:
            size: number of items in the dataset, > 0.
            shuffle: draw a fresh random permutation each epoch instead of ``range(size)``.
            seed: seed of the shared permutation stream; must be the same on every rank.
                ``None`` draws one with :func:`heron.utils.comm.shared_random_seed`.
        """
        self._size = _check_size(size, allow_zero=False)
        self._shuffle = bool(shuffle)
        self._seed = _resolve_seed(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class RandomSubsetTrainingSampler(TrainingSampler):
    """Like :class:`TrainingSampler`, but only over a fixed random subset of the dataset.

    The subset (``int(size * subset_ratio)`` indices) is drawn once from ``seed_subset``;
    each epoch then walks that subset, shuffled with ``seed_shuffle`` if ``shuffle``.
    """

    def __init__(
        self,
        size: int,
        subset_ratio: float,
        shuffle: bool = True,
        seed_shuffle: int | None = None,
        seed_subset: int | None = None,
    ) -> None:
        """
        Args:
            size: number of items in the dataset, > 0.
            subset_ratio: fraction of the dataset to keep, in (0, 1].
            shuffle: shuffle the subset each epoch.
            seed_shuffle: seed of the per-epoch shuffles (shared across ranks).
            seed_subset: seed of the subset choice (shared across ranks).
        """
        super().__init__(size=size, shuffle=shuffle, seed=seed_shuffle)
        if not 0.0 < subset_ratio <= 1.0:
            raise ValueError(f"subset_ratio must be in (0, 1], got {subset_ratio}")
        self._size_subset = int(size * subset_ratio)
        if self._size_subset <= 0:
            raise ValueError(
                f"subset_ratio={subset_ratio} of size={size} keeps no items; "
                "need int(size * subset_ratio) >= 1"
            )
        self._seed_subset = _resolve_seed(seed_subset)
        g = torch.Generator()
        g.manual_seed(self._seed_subset)
        self._indexes_subset = torch.randperm(self._size, generator=g)[: self._size_subset]
        logger.info("Using RandomSubsetTrainingSampler: %d of %d items", self._size_subset, size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                order = torch.randperm(self._size_subset, generator=g)
                yield from self._indexes_subset[order].tolist()
            else:
                yield from self._indexes_subset.tolist()


class RepeatFactorTrainingSampler(Sampler):
    """Endless stream in which each item appears about ``repeat_factor`` times per epoch.

    A factor such as 2.3 is rounded stochastically every epoch: the item appears 2 times
    with probability 0.7 and 3 times with probability 0.3, so its expected count is 2.3.
    Sharding across ranks works as in :class:`TrainingSampler`.
    """

    def __init__(
        self, repeat_factors: torch.Tensor, *, shuffle: bool = True, seed: int | None = None
    ) -> None:
        """
        Args:
            repeat_factors: (N,) float, repeat factor of each of the N dataset items, >= 0.
            shuffle: shuffle each epoch's repeated index list.
            seed: seed of the shared stream; ``None`` draws a shared random one.
        """
        factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        if factors.dim() != 1:
            raise ValueError(
                f"repeat_factors must be a 1-d tensor (N,), got shape {tuple(factors.shape)}"
            )
        if factors.numel() > 0 and bool((factors < 0).any()):
            bad = torch.nonzero(factors < 0).flatten()[:5].tolist()
            raise ValueError(f"repeat_factors must be >= 0; negative at indices {bad}")
        self._shuffle = bool(shuffle)
        self._seed = _resolve_seed(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._int_part = torch.trunc(factors)
        self._frac_part = factors - self._int_part

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: Sequence[dict[str, Any]], repeat_thresh: float, sqrt: bool = True
    ) -> torch.Tensor:
        """Compute per-image repeat factors from category frequency (the LVIS rule).

        With f(c) the fraction of images that contain category c and t = ``repeat_thresh``,
        the category factor is r(c) = max(1, sqrt(t / f(c))) (or max(1, t / f(c)) when
        ``sqrt`` is False). An image's factor is the largest r(c) over the categories in its
        annotations, and 1 for an image with no annotations.

        Args:
            dataset_dicts: dataset records in Detectron2 format, each with ``annotations``
                (a list of dicts with ``category_id``).
            repeat_thresh: frequency threshold t; categories rarer than t get oversampled.
            sqrt: take the square root of t / f(c), as in the LVIS paper.

        Returns:
            (N,) float32, the repeat factor of each of the N records.
        """
        image_cats = []
        for i, record in enumerate(dataset_dicts):
            if "annotations" not in record:
                raise KeyError(f"dataset_dicts[{i}] has no 'annotations' key")
            image_cats.append({ann["category_id"] for ann in record["annotations"]})
        num_images = len(image_cats)
        category_freq: dict[Any, float] = defaultdict(float)
        for cats in image_cats:
            for cat_id in cats:
                category_freq[cat_id] += 1.0
        for cat_id in category_freq:
            category_freq[cat_id] /= num_images

        def factor(freq: float) -> float:
            ratio = repeat_thresh / freq
            return max(1.0, math.sqrt(ratio) if sqrt else ratio)

        category_rep = {cat_id: factor(freq) for cat_id, freq in category_freq.items()}
        for cat_id in sorted(category_rep, key=str):
            logger.info(
                "Category %s: frequency %.4f, repeat factor %.4f",
                cat_id,
                category_freq[cat_id],
                category_rep[cat_id],
            )
        rep_factors = [max((category_rep[c] for c in cats), default=1.0) for cats in image_cats]
        return torch.tensor(rep_factors, dtype=torch.float32)

    def _get_epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """Draw one epoch: (M,) int64 dataset indices, item i repeated round(factor_i) times."""
        rands = torch.rand(self._frac_part.shape, generator=generator)
        counts = (self._int_part + (rands < self._frac_part).float()).long()
        return torch.repeat_interleave(torch.arange(len(counts)), counts)

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            indices = self._get_epoch_indices(g)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class InferenceSampler(Sampler):
    """Yields this rank's contiguous shard of ``range(size)``, once.

    Shard sizes differ by at most one (the first ``size % world_size`` ranks get one extra
    item), and concatenating the shards in rank order gives ``range(size)``. Unlike
    ``torch.utils.data.DistributedSampler`` it never pads, so no item is evaluated twice.
    """

    def __init__(self, size: int) -> None:
        """
        Args:
            size: number of items in the dataset, >= 0.
        """
        self._size = _check_size(size, allow_zero=True)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        """Return the slice of ``range(total_size)`` that belongs to ``rank`` of ``world_size``."""
        shard_size, left = divmod(total_size, world_size)
        shard_sizes = [shard_size + int(r < left) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        return range(begin, begin + shard_sizes[rank])

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
