"""Dynamic batching: requests that arrive close together share one forward of the model.

Each request puts one image in a bounded queue and awaits its result. A single worker task
takes the oldest waiting image, then keeps collecting until the batch holds ``max_batch``
images or ``max_wait_ms`` have passed since that oldest image arrived, and runs the batch as
one call of the predictor in a worker thread. Batches run one at a time, and the event loop
never waits on the model, so the server keeps accepting and answering other requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchTiming", "BatcherClosedError", "DynamicBatcher", "QueueFullError"]


class QueueFullError(RuntimeError):
    """The queue already holds ``queue_size`` waiting images."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down (or not started) and takes no new images."""


@dataclass(frozen=True)
class BatchTiming:
    """How one request was served.

    Attributes:
        queue_ms: milliseconds between submitting the image and the start of its batch.
        inference_ms: milliseconds the predictor took for the whole batch.
        batch_size: number of images in that batch.
    """

    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Job:
    image: Any
    future: asyncio.Future
    enqueued: float  # time.perf_counter() at submit


class DynamicBatcher:
    """Groups concurrent images into batches for one predictor.

    Create it, ``await start()`` inside the running event loop, ``await submit(image)`` from
    request handlers, and ``await close()`` at shutdown (it finishes every queued and running
    image first).

    Args:
        predictor: called as ``predictor(images)`` with a list of images, returns one output
            per image in order (e.g. :class:`heron.engine.predictor.BatchPredictor`).
        max_batch: most images per predictor call (>= 1).
        max_wait_ms: longest time to wait for more images after the first image of a batch
            arrived, in milliseconds (>= 0).
        queue_size: most images waiting for a batch; ``submit`` raises
            :class:`QueueFullError` beyond it (>= 1).
        on_batch: called with (batch_size, seconds) after each predictor call, e.g. to
            record metrics.
        on_depth: called with the number of waiting images whenever it changes.
    """

    def __init__(
        self,
        predictor: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10,
        queue_size: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._pending: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Number of images waiting for a batch (not counting the batch that runs)."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the worker task in the running event loop."""
        if self._worker is not None:
            raise RuntimeError("DynamicBatcher.start() was already called")
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heron-batch")
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, image: Any) -> tuple[Any, BatchTiming]:
        """Queue one image and wait for its output.

        Returns:
            (output, timing): the predictor's output for this image and how it was served.

        Raises:
            QueueFullError: ``queue_size`` images are already waiting.
            BatcherClosedError: the batcher is not started or is shutting down.
            Exception: whatever the predictor raised for this image's batch.
        """
        if self._worker is None or self._closing:
            raise BatcherClosedError("the batcher is not running (not started or shutting down)")
        if len(self._pending) >= self.queue_size:
            raise QueueFullError(f"the queue is full ({self.queue_size} images waiting)")
        job = _Job(image, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._pending.append(job)
        self._depth_changed()
        assert self._arrived is not None
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        """Stop taking images, finish every queued and running one, then stop the worker."""
        self._closing = True
        if self._worker is None:
            return
        assert self._arrived is not None and self._executor is not None
        self._arrived.set()
        await self._worker
        self._executor.shutdown(wait=True)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._pending))

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        """Wait until an image arrives or close() is called; False on timeout."""
        assert self._arrived is not None
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return False
        return True

    async def _run(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                await self._wait_for_arrival(None)
            # The batch's wait started when its oldest image arrived.
            deadline = self._pending[0].enqueued + self.max_wait_s
            while len(self._pending) < self.max_batch and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, self.depth))]
            self._depth_changed()
            batch = [job for job in batch if not job.future.done()]  # drop cancelled requests
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self.predictor, [job.image for job in batch]
            )
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"the predictor returned {len(outputs)} outputs for {len(batch)} images"
                )
        except Exception as e:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        finally:
            seconds = time.perf_counter() - started
            if self._on_batch is not None:
                self._on_batch(len(batch), seconds)
        for job, output in zip(batch, outputs):
            timing = BatchTiming(
                queue_ms=(started - job.enqueued) * 1000.0,
                inference_ms=seconds * 1000.0,
                batch_size=len(batch),
            )
            if not job.future.done():
                job.future.set_result((output, timing))
