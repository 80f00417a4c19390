"""Dataset wrappers: list-backed, mapped, sampler-driven iterable, aspect-ratio batching."""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import pickle
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

__all__ = [
    "AspectRatioGroupedDataset",
    "DatasetFromList",
    "MapDataset",
    "NumpySerializedList",
    "ToIterableDataset",
    "set_default_dataset_from_list_serialize_method",
]

logger = logging.getLogger(__name__)


def _shard_iterator_dataloader_worker(iterable: Iterable[Any], chunk_size: int = 1) -> Iterator:
    """Yield this DataLoader worker's share of ``iterable``.

    The iterable is cut into chunks of ``chunk_size``; worker ``i`` of ``n`` yields chunks
    ``i, i + n, i + 2n, ...``. Outside a worker, or with one worker, everything is yielded.
    A short final chunk is kept, so a finite iterable is covered exactly once.
    """
    worker_info = data.get_worker_info()
    if worker_info is None or worker_info.num_workers == 1:
        yield from iterable
        return
    it = iter(iterable)
    chunks = iter(lambda: list(itertools.islice(it, chunk_size)), [])
    for chunk in itertools.islice(chunks, worker_info.id, None, worker_info.num_workers):
        yield from chunk


class _MapIterableDataset(data.IterableDataset):
    """Applies ``map_func`` to each item of an iterable dataset, dropping ``None`` results.

    Unlike :class:`MapDataset` there is no retry: an iterable cannot be indexed, so an item
    whose mapping fails is skipped.
    """

    def __init__(self, dataset: Iterable[Any], map_func: Callable[[Any], Any]) -> None:
        self._dataset = dataset
        self._map_func = map_func

    def __len__(self) -> int:
        return len(self._dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for x in map(self._map_func, self._dataset):
            if x is not None:
                yield x


class MapDataset(data.Dataset):
    """Applies ``map_func`` to each item of a dataset.

    For a map-style dataset, when ``map_func`` returns ``None`` for an item (for example,
    the mapper filtered it out), another index is drawn at random and tried instead; an
    index that failed is not drawn again until it succeeds. A warning is logged from the
    third consecutive failure on. An iterable dataset is wrapped in
    :class:`_MapIterableDataset`, which skips ``None`` results.
    """

    def __new__(cls, dataset: Any, map_func: Callable[[Any], Any]) -> Any:
        if isinstance(dataset, data.IterableDataset):
            return _MapIterableDataset(dataset, map_func)
        return super().__new__(cls)

    def __init__(self, dataset: Any, map_func: Callable[[Any], Any]) -> None:
        """
        Args:
            dataset: a map-style dataset (``__getitem__`` and ``__len__``) or an iterable one.
            map_func: maps one item to a new item, or to ``None`` to reject it.
        """
        self._dataset = dataset
        self._map_func = map_func
        # A fixed seed keeps the fallback choice reproducible within each worker.
        self._rng = random.Random(42)
        self._fallback_candidates = set(range(len(dataset)))

    def __getnewargs__(self) -> tuple[Any, Callable[[Any], Any]]:
        # __new__ takes arguments, so unpickling (e.g. in a "spawn" worker) must pass them.
        return self._dataset, self._map_func

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int) -> Any:
        retry_count = 0
        cur_idx = int(idx)
        while True:
            result = self._map_func(self._dataset[cur_idx])
            if result is not None:
                self._fallback_candidates.add(cur_idx)
                return result
            retry_count += 1
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError(
                    f"map_func returned None for every item of the dataset (last idx "
                    f"{cur_idx}, {retry_count} tries starting from idx {idx})"
                )
            cur_idx = self._rng.choice(sorted(self._fallback_candidates))
            if retry_count >= 3:
                logger.warning(
                    "Failed to apply map_func for idx %d, retry count: %d", idx, retry_count
                )


class NumpySerializedList:
    """A list stored as pickled items in one numpy byte buffer plus an end-address array.

    A Python list of dicts makes every DataLoader worker touch (and so copy, through
    reference counting) the pages of every object. Two numpy arrays hold no Python objects,
    so workers started with "fork" keep sharing their memory.
    """

    def __init__(self, lst: Sequence[Any]) -> None:
        logger.info(
            "Serializing %d elements to byte tensors and concatenating them all ...", len(lst)
        )
        buffers = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in lst]
        # _addr[i] is the end offset of item i; item i spans [_addr[i - 1], _addr[i]).
        self._addr = np.cumsum(np.asarray([len(b) for b in buffers], dtype=np.int64))
        self._lst = np.concatenate(buffers) if buffers else np.zeros(0, dtype=np.uint8)
        logger.info("Serialized dataset takes %.2f MiB", len(self._lst) / 1024**2)

    def __len__(self) -> int:
        return len(self._addr)

    def __getitem__(self, idx: int) -> Any:
        start = 0 if idx == 0 else int(self._addr[idx - 1])
        end = int(self._addr[idx])
        return pickle.loads(memoryview(np.asarray(self._lst[start:end])))


class _TorchSerializedList(NumpySerializedList):
    """Like :class:`NumpySerializedList`, but the two buffers are torch tensors.

    Besides sharing pages with "fork" workers, torch tensors are moved to shared memory
    when pickled to "spawn"/"forkserver" workers, so those share the buffer too. This is
    the default serializer of :class:`DatasetFromList`, as in Detectron2.
    """

    def __init__(self, lst: Sequence[Any]) -> None:
        super().__init__(lst)
        self._addr = torch.from_numpy(self._addr)
        self._lst = torch.from_numpy(self._lst)

    def __getitem__(self, idx: int) -> Any:
        start = 0 if idx == 0 else int(self._addr[idx - 1])
        end = int(self._addr[idx])
        return pickle.loads(memoryview(self._lst[start:end].numpy()))


_DEFAULT_DATASET_FROM_LIST_SERIALIZE_METHOD: Callable[[Sequence[Any]], Any] = _TorchSerializedList


@contextlib.contextmanager
def set_default_dataset_from_list_serialize_method(
    new: Callable[[Sequence[Any]], Any],
) -> Iterator[None]:
    """Temporarily change the serializer that ``DatasetFromList(serialize=True)`` uses.

    Args:
        new: maps a list to a list-like object (``__len__`` and ``__getitem__``).
    """
    global _DEFAULT_DATASET_FROM_LIST_SERIALIZE_METHOD
    orig = _DEFAULT_DATASET_FROM_LIST_SERIALIZE_METHOD
    _DEFAULT_DATASET_FROM_LIST_SERIALIZE_METHOD = new
    try:
        yield
    finally:
        _DEFAULT_DATASET_FROM_LIST_SERIALIZE_METHOD = orig


class DatasetFromList(data.Dataset):
    """A map-style dataset over a list, optionally serialized to save worker memory."""

    def __init__(
        self,
        lst: Sequence[Any],
        copy: bool = True,
        serialize: bool | Callable[[Sequence[Any]], Any] = True,
    ) -> None:
        """
        Args:
            lst: the items, typically dataset dicts.
            copy: return a deep copy of an item from ``__getitem__``, so a caller that
                modifies it does not change the dataset. Ignored when serialized, since
                unpickling already makes a new object.
            serialize: store the list through a serializer; ``True`` uses the default
                one (a torch byte buffer, see :class:`_TorchSerializedList`; change it with
                :func:`set_default_dataset_from_list_serialize_method`), a callable is used
                as the serializer, ``False`` keeps the plain list.
        """
        if not (hasattr(lst, "__len__") and hasattr(lst, "__getitem__")) or isinstance(lst, dict):
            raise TypeError(f"lst must be a list, got {type(lst).__name__}")
        self._copy = copy
        if not isinstance(serialize, bool) and not callable(serialize):
            raise TypeError(f"serialize must be a bool or a callable, got {serialize!r}")
        self._serialize = serialize is not False
        if serialize is True:
            self._lst: Any = _DEFAULT_DATASET_FROM_LIST_SERIALIZE_METHOD(lst)
        elif serialize is False:
            self._lst = lst
        else:
            self._lst = serialize(lst)

    def __len__(self) -> int:
        return len(self._lst)

    def __getitem__(self, idx: int) -> Any:
        if self._copy and not self._serialize:
            return copy.deepcopy(self._lst[idx])
        return self._lst[idx]


class ToIterableDataset(data.IterableDataset):
    """Turns a map-style dataset and a sampler into an iterable dataset.

    Yields ``dataset[i]`` for each index ``i`` of the sampler. With several DataLoader
    workers and ``shard_sampler=True``, the sampler's stream is cut into chunks of
    ``shard_chunk_size`` and worker ``w`` of ``n`` takes chunks ``w, w + n, ...``, so the
    workers together visit each sampled index once.
    """

    def __init__(
        self,
        dataset: data.Dataset,
        sampler: Sampler,
        shard_sampler: bool = True,
        shard_chunk_size: int = 1,
    ) -> None:
        """
        Args:
            dataset: a map-style dataset.
            sampler: yields indices into ``dataset``; should be cheap to iterate, since each
                worker iterates all of it and keeps only its share.
            shard_sampler: shard the sampler over DataLoader workers. Set it to False when
                the sampler already yields a different stream in each worker.
            shard_chunk_size: number of consecutive indices per worker chunk, > 0.
        """
        if isinstance(dataset, data.IterableDataset):
            raise TypeError("dataset must be a map-style dataset, got an IterableDataset")
        if not isinstance(sampler, Sampler):
            raise TypeError(
                f"sampler must be a torch.utils.data.Sampler, got {type(sampler).__name__}"
            )
        if shard_chunk_size <= 0:
            raise ValueError(f"shard_chunk_size must be > 0, got {shard_chunk_size}")
        self.dataset = dataset
        self.sampler = sampler
        self.shard_sampler = shard_sampler
        self.shard_chunk_size = shard_chunk_size

    def __iter__(self) -> Iterator[Any]:
        if self.shard_sampler:
            indices = _shard_iterator_dataloader_worker(self.sampler, self.shard_chunk_size)
        else:
            indices = iter(self.sampler)
        for idx in indices:
            yield self.dataset[idx]

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class AspectRatioGroupedDataset(data.IterableDataset):
    """Batches dataset dicts so that each batch is all landscape or all portrait.

    Items go to bucket 0 when ``width > height`` and bucket 1 otherwise; a bucket is
    yielded as a batch (a list of dicts) when it holds ``batch_size`` items. Grouping by
    orientation reduces padding when a batch is stacked. Leftover partial buckets are not
    yielded.
    """

    def __init__(self, dataset: Iterable[dict[str, Any]], batch_size: int) -> None:
        """
        Args:
            dataset: an iterable of dicts, each with ``width`` and ``height``.
            batch_size: number of dicts per batch, > 0.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        # Two buckets: landscape (0) and portrait or square (1).
        self._buckets: list[list[dict[str, Any]]] = [[] for _ in range(2)]

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for d in self.dataset:
            try:
                w, h = d["width"], d["height"]
            except KeyError as e:
                raise KeyError(f"AspectRatioGroupedDataset needs 'width' and 'height'; {e}") from e
            bucket = self._buckets[0 if w > h else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                # Clear before yielding: the consumer may never resume this generator.
                bucket.clear()
                yield batch
