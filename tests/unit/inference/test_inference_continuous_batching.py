"""Continuous batching on the model worker: parked streams share one pass per round; join and leave between rounds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import pytest

from inference_svc.core.scheduling import Admission, Cost, Rates, Step, Ticket
from inference_svc.core.worker import ModelWorker


@dataclass(eq=False)
class _Part:
    run: object
    name: str
    value: int | None = None


class _Passes:
    """A fake model: each pass records which streams it served and gives each its own next value."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.passes: list[list[str]] = []
        self.fail_on = fail_on

    def run(self, parts: Sequence[_Part]) -> None:
        self.passes.append(sorted(p.name for p in parts))
        if self.fail_on is not None and len(self.passes) == self.fail_on:
            raise RuntimeError("the pass failed")
        for p in parts:
            p.value = len(self.passes)


def _stream(passes: _Passes, name: str, tokens: int, closed: list[str] | None = None) -> Iterator[Step]:
    try:
        for i in range(tokens):
            part = _Part(passes.run, name) if i < tokens - 1 else None
            yield Step(decode_tokens=1, item=f"{name}{i}", batch=part)
            if part is not None:
                assert part.value is not None, "resumed before its pass ran"
    finally:
        if closed is not None:
            closed.append(name)


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    w = ModelWorker(max_queue=16, max_active_streams=8)
    w.start()
    yield w
    w.close(timeout=5)


async def _collect(worker: ModelWorker, passes: _Passes, name: str, tokens: int, ticket: Ticket | None = None) -> list[str]:
    return [item async for item in worker.stream(lambda _c: _stream(passes, name, tokens), ticket=ticket)]


async def test_every_active_stream_advances_in_one_pass_per_round(worker: ModelWorker) -> None:
    passes = _Passes()
    release = threading.Event()
    worker.submit(lambda _c: release.wait(5))  # hold the worker until all four streams are queued
    replies = [asyncio.ensure_future(_collect(worker, passes, n, 5)) for n in "abcd"]
    await asyncio.sleep(0.05)
    release.set()
    assert await asyncio.gather(*replies) == [[f"{n}{i}" for i in range(5)] for n in "abcd"]
    assert passes.passes == [["a", "b", "c", "d"]] * 4  # 4 passes of 4 rows, not 16 passes of one


async def test_a_stream_joins_and_leaves_between_passes(worker: ModelWorker) -> None:
    passes = _Passes()
    release = threading.Event()
    worker.submit(lambda _c: release.wait(5))
    short = asyncio.ensure_future(_collect(worker, passes, "s", 2))
    long = asyncio.ensure_future(_collect(worker, passes, "l", 6))
    await asyncio.sleep(0.05)
    release.set()
    assert len(await short) == 2
    late = await _collect(worker, passes, "n", 3)
    assert len(late) == 3 and len(await long) == 6
    assert passes.passes[0] == ["l", "s"]  # together while both run
    assert ["l"] in passes.passes  # "s" left after its last token
    assert all(p.count(n) <= 1 for p in passes.passes for n in "lsn")  # at most one row per stream per pass
    assert sum("n" in p for p in passes.passes) == 2  # the newcomer's two passes


async def test_a_failed_pass_fails_every_stream_in_it_and_the_worker_goes_on(worker: ModelWorker) -> None:
    passes = _Passes(fail_on=1)
    release = threading.Event()
    worker.submit(lambda _c: release.wait(5))
    replies = [asyncio.ensure_future(_collect(worker, passes, n, 4)) for n in "ab"]
    await asyncio.sleep(0.05)
    release.set()
    for reply in replies:
        with pytest.raises(RuntimeError, match="the pass failed"):
            await reply
    assert await _collect(worker, _Passes(), "c", 3) == ["c0", "c1", "c2"]


async def test_a_stream_cancelled_while_parked_is_closed_without_its_row() -> None:
    worker = ModelWorker(max_queue=4, max_active_streams=4)
    passes = _Passes()
    closed: list[str] = []
    gate = threading.Event()
    cancel_events: dict[str, threading.Event] = {}

    def gated(parts: Sequence[_Part]) -> None:
        gate.wait(5)
        passes.run(parts)

    def stream(name: str, cancelled: threading.Event) -> Iterator[Step]:
        cancel_events[name] = cancelled
        try:
            for i in range(50):
                part = _Part(gated, name)
                yield Step(decode_tokens=1, item=i, batch=part)
        finally:
            closed.append(name)

    worker.start()
    try:
        release = threading.Event()
        worker.submit(lambda _c: release.wait(5))  # both streams start in the same round
        a = worker.stream(lambda c: stream("a", c))
        b = worker.stream(lambda c: stream("b", c))
        first = [asyncio.ensure_future(a.__anext__()), asyncio.ensure_future(b.__anext__())]
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.gather(*first) == [0, 0]
        await a.aclose()  # "a" goes away while its row waits for the pass in progress or the next one
        gate.set()
        assert [await b.__anext__() for _ in range(3)] == [1, 2, 3]
        await b.aclose()
        for _ in range(100):
            if len(closed) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(closed) == ["a", "b"]
        assert sum("a" in p for p in passes.passes) <= 1  # at most the pass already running when it left
    finally:
        worker.close(timeout=5)


async def test_a_pass_prices_all_its_tokens_and_each_ticket_counts_its_own(worker: ModelWorker) -> None:
    rates = worker.rates
    passes = _Passes()
    tickets = [Ticket("-", Cost(0, 5)) for _ in range(3)]
    release = threading.Event()
    worker.submit(lambda _c: release.wait(5))
    replies = [asyncio.ensure_future(_collect(worker, passes, n, 5, t)) for n, t in zip("abc", tickets)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(*replies)
    assert [t.decode_left for t in tickets] == [0, 0, 0]
    # three tokens per pass: the aggregate rate is three times what one pass per token would be
    assert rates.decode_tps == pytest.approx(3 / rates.step_seconds, rel=0.5)


def test_a_reply_takes_a_pass_per_token_however_fast_the_batched_rate() -> None:
    rates = Rates(prefill_tps=1000, decode_tps=10, alpha=1.0)
    rates.observe("decode", 8, 0.1)  # 8 streams advanced in a 0.1 s pass: 80 tokens/s together
    assert rates.decode_tps == pytest.approx(80)
    assert rates.step_seconds == pytest.approx(0.1)
    admission = Admission(rates, headroom=1.0)
    # alone, 50 tokens take 50 passes (5 s), not 50 tokens at the aggregate rate (0.6 s)
    assert admission.expected_seconds("-", Cost(0, 50)) == pytest.approx(5.0)
    admission.admit("-", Cost(0, 50), None)
    with pytest.raises(Exception, match="expected to finish"):
        admission.admit("other", Cost(0, 50), 4.0)
