"""Training-time metric storage: ``HistoryBuffer`` and the ``EventStorage`` stack.

``EventStorage`` is Detectron2's: the trainer opens one (``with EventStorage(start_iter):``),
model and hook code put scalars, images and histograms into it, and writers read them out.
``HistoryBuffer`` is fvcore's per-scalar history. The writers Detectron2 ships (console,
JSON lines, TensorBoard) live here too; Weights & Biases and MLflow writers are in
``heron.utils.tracking``.

Model code should prefer ``try_get_event_storage()``: it returns None when no storage is open,
so a loss can be computed in a test or a notebook without a trainer.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from heron.utils.file_io import PathManager

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "HistoryBuffer",
    "JSONWriter",
    "TensorboardXWriter",
    "get_event_storage",
    "has_event_storage",
    "try_get_event_storage",
]

# The open storages, innermost last. Entered and left by ``EventStorage.__enter__/__exit__``.
_CURRENT_STORAGE_STACK: list[EventStorage] = []


def get_event_storage() -> EventStorage:
    """Return the innermost open ``EventStorage``.

    Raises:
        RuntimeError: if no storage is open.
    """
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context; "
            "none is open. Model code that only records statistics can use "
            "try_get_event_storage(), which returns None here."
        )
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Return whether an ``EventStorage`` is currently open."""
    return len(_CURRENT_STORAGE_STACK) > 0


def try_get_event_storage() -> EventStorage | None:
    """Return the innermost open ``EventStorage``, or None when none is open."""
    return _CURRENT_STORAGE_STACK[-1] if _CURRENT_STORAGE_STACK else None


class HistoryBuffer:
    """The recent history of one scalar, with windowed and global statistics.

    Keeps the last ``max_length`` ``(value, iteration)`` pairs; ``global_avg`` covers every
    value ever added, including those that fell out of the buffer.
    """

    def __init__(self, max_length: int = 1000000) -> None:
        """Create an empty buffer.

        Args:
            max_length: how many ``(value, iteration)`` pairs to keep (>= 1).
        """
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self._max_length: int = int(max_length)
        self._data: deque[tuple[float, float]] = deque(maxlen=self._max_length)
        self._count: int = 0
        self._global_avg: float = 0.0

    @property
    def max_length(self) -> int:
        """The number of ``(value, iteration)`` pairs kept."""
        return self._max_length

    def update(self, value: float, iteration: float | None = None) -> None:
        """Add a value.

        Args:
            value: the scalar.
            iteration: its iteration number; defaults to the number of values added so far.
        """
        if iteration is None:
            iteration = self._count
        self._data.append((value, iteration))
        self._count += 1
        # running mean: avoids keeping a sum that can lose precision over long runs
        self._global_avg += (value - self._global_avg) / self._count

    def _window(self, window_size: int) -> list[float]:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not self._data:
            raise IndexError("HistoryBuffer is empty: no value has been added")
        start = max(len(self._data) - window_size, 0)
        return [self._data[i][0] for i in range(start, len(self._data))]

    def latest(self) -> float:
        """Return the most recently added value.

        Raises:
            IndexError: if the buffer is empty.
        """
        if not self._data:
            raise IndexError("HistoryBuffer is empty: no value has been added")
        return self._data[-1][0]

    def median(self, window_size: int) -> float:
        """Return the median of the last ``window_size`` values (all if fewer)."""
        return float(np.median(self._window(window_size)))

    def avg(self, window_size: int) -> float:
        """Return the mean of the last ``window_size`` values (all if fewer)."""
        return float(np.mean(self._window(window_size)))

    def global_avg(self) -> float:
        """Return the mean of every value ever added (0.0 if none)."""
        return self._global_avg

    def values(self) -> list[tuple[float, float]]:
        """Return the kept ``(value, iteration)`` pairs, oldest first."""
        return list(self._data)


class EventStorage:
    """Stores the metrics of a training run, indexed by iteration.

    Open it with ``with EventStorage(start_iter) as storage:``; inside, ``get_event_storage()``
    returns it. Scalars go to a ``HistoryBuffer`` per name; images and histograms are queued
    until a writer reads and clears them.
    """

    def __init__(self, start_iter: int = 0) -> None:
        """Create a storage.

        Args:
            start_iter: the iteration number of the first step.
        """
        self._history: dict[str, HistoryBuffer] = {}
        self._smoothing_hints: dict[str, bool] = {}
        self._latest_scalars: dict[str, tuple[float, int]] = {}
        self._iter: int = int(start_iter)
        self._current_prefix: str = ""
        self._vis_data: list[tuple[str, Any, int]] = []
        self._histograms: list[dict[str, Any]] = []

    def put_image(self, img_name: str, img_tensor: Any) -> None:
        """Queue an image for writers (e.g. TensorBoard).

        Args:
            img_name: the image's tag.
            img_tensor: (3, H, W) float in [0, 1] or uint8 in [0, 255], RGB.
        """
        self._vis_data.append((img_name, img_tensor, self._iter))

    def put_scalar(
        self,
        name: str,
        value: float,
        smoothing_hint: bool = True,
        cur_iter: int | None = None,
    ) -> None:
        """Record a scalar (prefixed by the current ``name_scope``).

        Args:
            name: the scalar's name.
            value: a number or a one-element tensor.
            smoothing_hint: whether writers should median-smooth it; must agree with the hint
                given when this name was first put.
            cur_iter: the iteration to record it at; defaults to ``self.iter``.

        Raises:
            ValueError: if ``smoothing_hint`` differs from this name's earlier hint.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        existing_hint = self._smoothing_hints.get(name)
        if existing_hint is not None and existing_hint != smoothing_hint:
            raise ValueError(
                f"Scalar {name!r} was put with smoothing_hint={existing_hint} before and "
                f"smoothing_hint={smoothing_hint} now; a scalar keeps one hint"
            )
        value = float(value)
        self._history.setdefault(name, HistoryBuffer()).update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: int | None = None, **kwargs: float
    ) -> None:
        """Record several scalars: ``storage.put_scalars(loss=0.5, accuracy=0.9)``."""
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """Queue a histogram of a tensor's values for writers.

        Stores the arguments of TensorBoard's ``add_histogram_raw``: ``tag``, ``min``, ``max``,
        ``num`` (element count), ``sum``, ``sum_squares``, ``bucket_limits`` (the right edges
        of ``bins`` equal-width buckets over [min, max]), ``bucket_counts`` and
        ``global_step``.

        Args:
            hist_name: the histogram's tag.
            hist_tensor: any shape, float; flattened.
            bins: the number of buckets.

        Raises:
            ValueError: if ``hist_tensor`` is empty or ``bins`` < 1.
        """
        if hist_tensor.numel() == 0:
            raise ValueError(f"put_histogram({hist_name!r}): hist_tensor is empty")
        if bins < 1:
            raise ValueError(f"put_histogram({hist_name!r}): bins must be >= 1, got {bins}")
        values = hist_tensor.detach().flatten()
        if not values.is_floating_point():
            values = values.float()  # torch.histc needs a floating dtype
        ht_min, ht_max = values.min().item(), values.max().item()
        # torch.histc spans [min, max] of the data, as Detectron2's put_histogram relies on
        hist_counts = torch.histc(values, bins=bins)
        hist_edges = torch.linspace(ht_min, ht_max, steps=bins + 1, dtype=torch.float32)
        self._histograms.append(
            {
                "tag": hist_name,
                "min": ht_min,
                "max": ht_max,
                "num": values.numel(),
                "sum": float(values.sum()),
                "sum_squares": float(torch.sum(values**2)),
                "bucket_limits": hist_edges[1:].tolist(),
                "bucket_counts": hist_counts.tolist(),
                "global_step": self._iter,
            }
        )

    def history(self, name: str) -> HistoryBuffer:
        """Return the ``HistoryBuffer`` of a scalar.

        Raises:
            KeyError: naming ``name`` and listing the known scalars, if none was put.
        """
        if name not in self._history:
            known = ", ".join(sorted(self._history)) or "(none)"
            raise KeyError(f"No history metric available for {name!r}; known scalars: {known}")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        """Return the ``HistoryBuffer`` of every scalar, by name."""
        return self._history

    def latest(self) -> dict[str, tuple[float, int]]:
        """Return ``{name: (latest value, iteration it was put at)}`` for every scalar."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like ``latest``, but scalars with a smoothing hint give a median.

        The median is over the values put during the last ``window_size`` iterations
        (``count_samples``), not the last ``window_size`` values, as in Detectron2.
        """
        result = {}
        for k, (v, itr) in self._latest_scalars.items():
            if self._smoothing_hints[k]:
                v = self._history[k].median(self.count_samples(k, window_size))
            result[k] = (v, itr)
        return result

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """Return how many values of ``name`` were put in the last ``window_size`` iterations.

        "Last" is relative to the iteration of its latest value: values with iteration
        ``> latest_iter - window_size`` count.
        """
        data = self.history(name).values()
        last_iter = data[-1][1]
        samples = 0
        for _, itr in reversed(data):
            if itr <= last_iter - window_size:
                break
            samples += 1
        return samples

    def smoothing_hints(self) -> dict[str, bool]:
        """Return ``{name: smoothing_hint}`` for every scalar."""
        return self._smoothing_hints

    def step(self) -> None:
        """Advance the iteration counter by one."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The current iteration number (the trainer keeps it equal to its own)."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:
        """Alias of ``iter``, kept for compatibility."""
        return self._iter

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage contexts were exited out of order")
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix the names of scalars put inside the block with ``"name/"``.

        As in Detectron2, a nested scope replaces the outer prefix rather than extending it.
        """
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    def clear_images(self) -> None:
        """Drop the queued images (writers call this after writing them)."""
        self._vis_data = []

    def clear_histograms(self) -> None:
        """Drop the queued histograms (writers call this after writing them)."""
        self._histograms = []


# ---------------------------------------------------------------- writers


def _scalars_since(
    storage: EventStorage, window_size: int, last_write: int
) -> dict[int, dict[str, float]]:
    """Group the scalars put after iteration ``last_write`` by the iteration they were put at.

    Values follow ``latest_with_smoothing_hint(window_size)``. Iterations come out in
    increasing order, so a writer that needs monotonic steps can iterate the result directly.
    """
    grouped: dict[int, dict[str, float]] = {}
    for name, (value, itr) in storage.latest_with_smoothing_hint(window_size).items():
        if itr > last_write:
            grouped.setdefault(int(itr), {})[name] = value
    return dict(sorted(grouped.items()))


class EventWriter:
    """Base class of the writers that read an ``EventStorage`` and send its events somewhere.

    A trainer calls ``write()`` periodically inside the storage's context and ``close()``
    once at the end.
    """

    def write(self) -> None:
        """Write the events of the current storage (``get_event_storage()``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement write()")

    def close(self) -> None:
        """Release files and connections; the base class holds none."""


def _format_eta(seconds: float) -> str:
    # whole seconds, as "h:mm:ss" (or "N days, h:mm:ss"), the way Detectron2 prints it
    return str(datetime.timedelta(seconds=int(max(seconds, 0.0))))


class CommonMetricPrinter(EventWriter):
    """Log one line of training progress: ETA, iteration, losses, timings, lr and memory.

    The line has Detectron2's layout, e.g.
    ``" eta: 0:00:44  iter: 10  total_loss: 1.2  loss_cls: 0.7  ...  time: 0.5000  last_time:
    0.5000  data_time: 0.0100  last_data_time: 0.0100   lr: 0.02  max_mem: 1234M"``, logged
    at INFO through the ``"heron.utils.events"`` logger. Scalars whose name contains
    ``"loss"`` (and those containing ``"[metric]"``) are printed as the median over the last
    ``window_size`` iterations; ``time`` is the mean of all iteration times, ``data_time`` the
    mean over the window; ``max_mem`` appears only when CUDA is available.
    """

    def __init__(self, max_iter: int | None = None, window_size: int = 20) -> None:
        """Create a printer.

        Args:
            max_iter: the number of training iterations, for the ETA; None prints no ETA.
            window_size: the number of iterations the losses are median-smoothed over.
        """
        self.logger = logging.getLogger(__name__)
        self._max_iter = max_iter
        self._window_size = window_size
        # (iteration, perf_counter) of the previous wall-clock ETA estimate
        self._last_write: tuple[int, float] | None = None
        self._last_printed_iter: int | None = None

    def _get_eta(self, storage: EventStorage) -> str | None:
        """Return the ETA string, "" without ``max_iter``, None when it cannot be estimated."""
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        remaining = self._max_iter - iteration - 1
        if "time" in storage.histories():
            eta_seconds = storage.history("time").median(1000) * remaining
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return _format_eta(eta_seconds)
        # No "time" history (e.g. a custom trainer): estimate from the wall clock between
        # writes, which is noisier.
        now = time.perf_counter()
        eta_string = None
        if self._last_write is not None and iteration > self._last_write[0]:
            per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
            eta_string = _format_eta(per_iter * remaining)
        self._last_write = (iteration, now)
        return eta_string

    def write(self) -> None:
        """Log the progress line for the current iteration.

        Nothing is logged at ``iteration == max_iter`` (training is over, as in Detectron2),
        nor a second time for the same iteration (e.g. a periodic write followed by the final
        one).
        """
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter or iteration == self._last_printed_iter:
            return
        self._last_printed_iter = iteration
        histories = storage.histories()

        def smoothed(name: str) -> float:
            return histories[name].median(storage.count_samples(name, self._window_size))

        avg_data_time = last_data_time = avg_iter_time = last_iter_time = None
        if "data_time" in histories:  # absent in the first iterations or without SimpleTrainer
            window = storage.count_samples("data_time", self._window_size)
            avg_data_time = histories["data_time"].avg(window)
            last_data_time = histories["data_time"].latest()
        if "time" in histories:
            avg_iter_time = histories["time"].global_avg()
            last_iter_time = histories["time"].latest()
        lr = f"{histories['lr'].latest():.5g}" if "lr" in histories else "N/A"
        eta_string = self._get_eta(storage)
        max_mem_mb = None
        if torch.cuda.is_available():
            max_mem_mb = torch.cuda.max_memory_allocated() / 1024.0 / 1024.0

        losses = "  ".join(f"{k}: {smoothed(k):.4g}" for k in histories if "loss" in k)
        metrics = "  ".join(f"{k}: {smoothed(k):.4g}" for k in histories if "[metric]" in k)
        timings = "".join(
            f"{label}: {value:.4f}  "
            for label, value in (
                ("time", avg_iter_time),
                ("last_time", last_iter_time),
                ("data_time", avg_data_time),
                ("last_data_time", last_data_time),
            )
            if value is not None
        )
        eta = f"eta: {eta_string}  " if eta_string else ""
        memory = f"max_mem: {max_mem_mb:.0f}M" if max_mem_mb is not None else ""
        # The spacing is Detectron2's, so tools that grep its logs (e.g. for max_mem) work.
        self.logger.info(
            f" {eta}iter: {iteration}  {losses}  {metrics}  {timings} lr: {lr}  {memory}"
        )


class JSONWriter(EventWriter):
    """Append scalars to a file, one JSON object per iteration per line.

    Each line is ``{"iteration": it, "<name>": value, ...}`` (keys sorted) and holds the
    scalars put at that iteration since the previous write, smoothed as
    ``EventStorage.latest_with_smoothing_hint``. Read it back with
    ``[json.loads(line) for line in open(path)]``.
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        """Open the file (any ``PathManager`` path) for appending.

        Args:
            json_file: the file; new lines are appended when it exists.
            window_size: the median window, in iterations, of scalars with a smoothing hint.
        """
        self._file_handle = PathManager.open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        """Append the scalars put since the last write, then flush the file."""
        storage = get_event_storage()
        grouped = _scalars_since(storage, self._window_size, self._last_write)
        for itr, scalars in grouped.items():
            self._file_handle.write(json.dumps({**scalars, "iteration": itr}, sort_keys=True))
            self._file_handle.write("\n")
            self._last_write = max(self._last_write, itr)
        self._file_handle.flush()
        # remote (fsspec) files have no file descriptor to sync
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.fsync(self._file_handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """Write scalars, images and histograms to TensorBoard event files.

    Scalars put since the last write go to ``add_scalar`` (smoothed as
    ``latest_with_smoothing_hint``). Queued images (``put_image``) and histograms
    (``put_histogram``) go to ``add_image`` and ``add_histogram_raw`` and are then cleared
    from the storage: as in Detectron2, one writer consumes them.
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs: Any) -> None:
        """Create the event-file writer.

        Args:
            log_dir: the directory of the event files.
            window_size: the median window, in iterations, of scalars with a smoothing hint.
            kwargs: passed to ``torch.utils.tensorboard.SummaryWriter``.

        Raises:
            ImportError: if tensorboard is not installed.
        """
        self._window_size = window_size
        self._last_write = -1
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorboardXWriter needs the tensorboard package: pip install 'heron[tb]'"
            ) from e
        self._writer = SummaryWriter(log_dir, **kwargs)

    def write(self) -> None:
        """Write new scalars and the queued images and histograms."""
        storage = get_event_storage()
        for itr, scalars in _scalars_since(storage, self._window_size, self._last_write).items():
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, itr)
            self._last_write = max(self._last_write, itr)
        # put_image/put_histogram data is queued for writers; this one reads and clears it
        if storage._vis_data:
            for img_name, img, step in storage._vis_data:
                self._writer.add_image(img_name, img, step)
            storage.clear_images()
        if storage._histograms:
            for params in storage._histograms:
                self._writer.add_histogram_raw(**params)
            storage.clear_histograms()

    def close(self) -> None:
        """Flush and close the event files."""
        self._writer.close()
