"""Singleflight: one source run shared by every reader, streamed items included."""

from __future__ import annotations

import asyncio

from gateway.core.singleflight import Flight, SingleFlight


async def numbers(gate: asyncio.Event, runs: list[int], n: int = 3, fail: bool = False):  # type: ignore[no-untyped-def]
    runs.append(1)
    for i in range(n):
        await gate.wait()
        yield i
    if fail:
        raise RuntimeError("boom")


async def collect(flight: Flight[int]) -> list[int]:
    return [x async for x in flight.read()]


async def test_late_joiner_gets_every_item_and_source_runs_once() -> None:
    gate, runs = asyncio.Event(), []
    flights: SingleFlight[int] = SingleFlight()
    f = flights.start("k", numbers(gate, runs))
    first = asyncio.ensure_future(collect(f))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.sleep(0.01)
    joined = flights.get("k")
    assert joined is f
    assert await collect(joined) == [0, 1, 2]
    assert await first == [0, 1, 2]
    assert runs == [1]


async def test_error_reaches_every_reader_and_failed_flight_is_not_joined() -> None:
    gate, runs = asyncio.Event(), []
    gate.set()
    flights: SingleFlight[int] = SingleFlight()
    f = flights.start("k", numbers(gate, runs, fail=True))
    results = await asyncio.gather(collect(f), collect(f), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert flights.get("k") is None


async def test_last_reader_leaving_cancels_the_source() -> None:
    gate = asyncio.Event()
    cancelled = asyncio.Event()

    async def source():  # type: ignore[no-untyped-def]
        try:
            yield 1
            await gate.wait()
            yield 2
        finally:
            cancelled.set()

    f: Flight[int] = Flight(source())
    reader = asyncio.ensure_future(collect(f))
    await asyncio.sleep(0.01)
    reader.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    await asyncio.sleep(0)
    assert f.done and not f.succeeded


async def test_done_callback_runs_even_if_cancelled_before_starting() -> None:
    seen = []

    async def never():  # type: ignore[no-untyped-def]
        yield 1

    f: Flight[int] = Flight(never())
    f.add_done_callback(lambda fl: seen.append(fl.done))
    f._task.cancel()  # before its first step
    await asyncio.sleep(0.01)
    assert seen == [True]


async def test_finished_flight_is_only_joined_when_allowed() -> None:
    gate, runs = asyncio.Event(), []
    gate.set()
    flights: SingleFlight[int] = SingleFlight()
    f = flights.start("k", numbers(gate, runs))
    await collect(f)
    assert flights.get("k", include_finished=True) is f
    assert flights.get("k", include_finished=False) is None
    flights.forget("k", f)
    assert flights.get("k") is None
    flights.forget("k", f)  # forgetting twice is harmless
