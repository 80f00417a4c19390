"""Batch sampler that only puts items of the same group into one batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data.sampler import BatchSampler, Sampler

__all__ = ["GroupedBatchSampler"]


class GroupedBatchSampler(BatchSampler):
    """Groups the indices of a sampler into batches whose items share a group id.

    Indices are buffered per group in the order the sampler yields them; a batch is emitted
    as soon as a group's buffer holds ``batch_size`` indices. Batches therefore follow the
    sampler's order as closely as grouping allows. Partly filled buffers are never emitted,
    which suits the infinite training samplers this is meant for.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int) -> None:
        """
        Args:
            sampler: yields dataset indices.
            group_ids: (N,) int, the group of each of the N dataset items.
            batch_size: number of indices per batch, > 0.
        """
        if not isinstance(sampler, Sampler):
            raise ValueError(
                "sampler must be a torch.utils.data.Sampler, "
                f"got {type(sampler).__name__}: {sampler!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        group_ids_arr = np.asarray(group_ids)
        if group_ids_arr.ndim != 1:
            raise ValueError(f"group_ids must be 1-d (N,), got shape {tuple(group_ids_arr.shape)}")
        self.sampler = sampler
        self.group_ids = group_ids_arr
        self.batch_size = batch_size
        self.drop_last = True
        groups = np.unique(self.group_ids).tolist()
        # Buffers live on the instance so an interrupted iteration can be resumed.
        self.buffer_per_group: dict[int, list[int]] = {k: [] for k in groups}

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.sampler:
            group_id = self.group_ids[idx].item()
            group_buffer = self.buffer_per_group[group_id]
            group_buffer.append(idx)
            if len(group_buffer) == self.batch_size:
                batch = group_buffer[:]
                # Clear before yielding: the consumer may never resume this generator.
                group_buffer.clear()
                yield batch

    def __len__(self) -> int:
        # How many batches come out depends on the order of groups in the sampler's stream.
        raise TypeError("len() of GroupedBatchSampler is not defined")
