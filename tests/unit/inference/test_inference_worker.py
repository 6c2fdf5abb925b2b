"""The model worker: results and errors as values, a bounded queue, streams interleaved with calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from inference_svc.core.worker import ModelWorker
from reprise.errors import InvalidArgument, ResourceExhausted


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    w = ModelWorker(max_queue=3, max_active_streams=2)
    w.start()
    yield w
    w.close(timeout=5)


def _blocker(worker: ModelWorker) -> threading.Event:
    """Occupy the worker until the returned event is set."""
    release, running = threading.Event(), threading.Event()

    def hold(_cancelled: threading.Event) -> None:
        running.set()
        release.wait(5)

    worker.submit(hold)
    assert running.wait(5)
    return release


async def test_call_returns_result_and_failures_do_not_kill_the_worker(worker: ModelWorker) -> None:
    assert await worker.call(lambda _: 41 + 1) == 42

    def boom(_cancelled: threading.Event) -> None:
        raise InvalidArgument("text", "bad")

    with pytest.raises(InvalidArgument):
        await worker.call(boom)
    assert await worker.call(lambda _: "still alive") == "still alive"


async def test_full_queue_is_refused_at_once(worker: ModelWorker) -> None:
    release = _blocker(worker)
    try:
        waiting = [asyncio.ensure_future(worker.call(lambda _: 1)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="queue is full"):
            await worker.call(lambda _: 1)
    finally:
        release.set()
    assert await asyncio.gather(*waiting) == [1, 1, 1]


async def test_calls_run_between_tokens_of_a_stream(worker: ModelWorker) -> None:
    events: list[str] = []
    at_token1, queued = threading.Event(), threading.Event()

    def tokens(_cancelled: threading.Event) -> Iterator[int]:
        for i in range(4):
            events.append(f"token{i}")
            if i == 1:
                at_token1.set()
                assert queued.wait(5)
            yield i

    async def consume() -> list[int]:
        return [t async for t in worker.stream(tokens)]

    stream = asyncio.ensure_future(consume())
    assert await asyncio.to_thread(at_token1.wait, 5)
    call = asyncio.ensure_future(worker.call(lambda _: events.append("call") or True))
    await asyncio.sleep(0.01)  # call() has queued its job
    queued.set()
    assert await call
    assert await stream == [0, 1, 2, 3]
    assert events.index("token1") < events.index("call") < events.index("token2")


async def test_stream_error_reaches_the_consumer(worker: ModelWorker) -> None:
    def failing(_cancelled: threading.Event) -> Iterator[int]:
        yield 1
        raise InvalidArgument("text", "too long")

    got = []
    with pytest.raises(InvalidArgument):
        async for item in worker.stream(failing):
            got.append(item)
    assert got == [1]


async def test_consumer_leaving_stops_the_generator(worker: ModelWorker) -> None:
    produced: list[int] = []
    closed = threading.Event()

    def endless(cancelled: threading.Event) -> Iterator[int]:
        try:
            i = 0
            while not cancelled.is_set():
                time.sleep(0.01)  # a decode step
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    async with contextlib.aclosing(worker.stream(endless)) as items:
        async for item in items:
            if item == 2:
                break
    assert await asyncio.to_thread(closed.wait, 5)
    assert len(produced) <= 5  # stopped within a step or two of the consumer leaving at item 2


async def test_a_burst_of_streams_fits_the_free_slots_plus_the_queue() -> None:
    # The burst arrives before the worker thread picks anything up: streams that will take a
    # free decode slot are not "waiting", so 2 slots + 1 queued are accepted and only the 4th is refused.
    w = ModelWorker(max_queue=1, max_active_streams=2)

    def tokens(_cancelled: threading.Event) -> Iterator[str]:
        yield from "ab"

    streams = [w.stream(tokens) for _ in range(4)]
    firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
    await asyncio.sleep(0.01)  # every stream has tried to enqueue; the worker is not running yet
    assert firsts[3].done()
    with pytest.raises(ResourceExhausted, match="queue is full"):
        firsts[3].result()
    assert w.depth == 1
    w.start()
    try:
        assert await asyncio.gather(*firsts[:3]) == ["a", "a", "a"]
        assert [[t async for t in s] for s in streams[:3]] == [["b"], ["b"], ["b"]]
    finally:
        w.close(timeout=5)
