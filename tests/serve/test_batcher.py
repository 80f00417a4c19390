"""DynamicBatcher: grouping, waiting, the bounded queue, errors and draining at close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from heron.serve.batcher import BatcherClosedError, DynamicBatcher, QueueFullError


class Recorder:
    """Doubles each number; records the batches it was called with."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, images: list[int]) -> list[int]:
        self.batches.append(list(images))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [2 * x for x in images]


def test_concurrent_submits_share_batches_of_at_most_max_batch():
    predictor = Recorder()

    async def run():
        batcher = DynamicBatcher(predictor, max_batch=4, max_wait_ms=200)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return results

    results = asyncio.run(run())
    assert [output for output, _ in results] == [2 * i for i in range(10)]
    # all 10 arrive at once: batches of 4, 4 and the remaining 2 (after max_wait_ms)
    assert predictor.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [timing.batch_size for _, timing in results] == [4] * 8 + [2] * 2
    assert all(name.startswith("heron-batch") for name in predictor.threads)


def test_a_lone_request_waits_max_wait_ms_then_runs_alone():
    predictor = Recorder()

    async def run():
        batcher = DynamicBatcher(predictor, max_batch=8, max_wait_ms=100)
        await batcher.start()
        started = time.perf_counter()
        output, timing = await batcher.submit(7)
        elapsed = time.perf_counter() - started
        await batcher.close()
        return output, timing, elapsed

    output, timing, elapsed = asyncio.run(run())
    assert output == 14 and timing.batch_size == 1
    assert 0.09 <= elapsed < 5.0
    assert timing.queue_ms >= 90  # it waited ~100 ms for company


def test_images_arriving_while_a_batch_runs_form_the_next_batch():
    predictor = Recorder(delay=0.2)

    async def run():
        batcher = DynamicBatcher(predictor, max_batch=8, max_wait_ms=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # batch [0] is running
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.gather(first, *rest)
        await batcher.close()

    asyncio.run(run())
    assert predictor.batches == [[0], [1, 2, 3]]


def test_submit_beyond_queue_size_raises_queue_full():
    predictor = Recorder(delay=0.15)

    async def run():
        batcher = DynamicBatcher(predictor, max_batch=1, max_wait_ms=0, queue_size=2)
        await batcher.start()
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # 0 is in the predictor, the queue is empty
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFullError, match="2 images waiting"):
            await batcher.submit(3)
        results = await asyncio.gather(running, *waiting)
        await batcher.close()
        return [output for output, _ in results]

    assert asyncio.run(run()) == [0, 2, 4]


def test_predictor_error_reaches_every_request_of_its_batch_only():
    calls = []

    def predictor(images):
        calls.append(list(images))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return images

    async def run():
        batcher = DynamicBatcher(predictor, max_batch=2, max_wait_ms=100)
        await batcher.start()
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        output, _ = await batcher.submit(3)
        await batcher.close()
        return failed, output

    failed, output = asyncio.run(run())
    assert [str(e) for e in failed] == ["boom", "boom"]
    assert output == 3 and calls == [[1, 2], [3]]


def test_wrong_number_of_outputs_is_an_error():
    async def run():
        batcher = DynamicBatcher(lambda images: [], max_batch=1)
        await batcher.start()
        with pytest.raises(RuntimeError, match="0 outputs for 1 images"):
            await batcher.submit(1)
        await batcher.close()

    asyncio.run(run())


def test_close_finishes_queued_images_and_then_refuses_new_ones():
    predictor = Recorder(delay=0.05)

    async def run():
        batcher = DynamicBatcher(predictor, max_batch=2, max_wait_ms=1000)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        await batcher.close()  # does not wait max_wait_ms for the last, lone image
        closing_s = time.perf_counter() - started
        assert all(f.done() for f in pending)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(9)
        return [f.result()[0] for f in pending], closing_s

    outputs, closing_s = asyncio.run(run())
    assert outputs == [0, 2, 4, 6, 8]
    assert predictor.batches == [[0, 1], [2, 3], [4]]
    assert closing_s < 0.9


def test_depth_and_batch_callbacks_are_called():
    depths, batches = [], []

    async def run():
        batcher = DynamicBatcher(
            lambda images: images,
            max_batch=2,
            max_wait_ms=50,
            on_batch=lambda n, s: batches.append((n, s)),
            on_depth=depths.append,
        )
        await batcher.start()
        await asyncio.gather(batcher.submit(1), batcher.submit(2))
        await batcher.close()

    asyncio.run(run())
    assert depths == [1, 2, 0]
    assert [n for n, _ in batches] == [2] and batches[0][1] >= 0


def test_submit_before_start_raises():
    batcher = DynamicBatcher(lambda images: images)
    with pytest.raises(BatcherClosedError, match="not started"):
        asyncio.run(batcher.submit(1))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"queue_size": 0}, "queue_size"),
    ],
)
def test_invalid_settings_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DynamicBatcher(lambda images: images, **kwargs)
