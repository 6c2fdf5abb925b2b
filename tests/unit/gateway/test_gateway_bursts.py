"""Bursts: identical requests in flight share one cache lookup and one model run (issue 25, item 5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gateway_fakes import FakeCache, FakeInference

from gateway.core.flow import Gateway, GatewayConfig
from gateway.core.types import CacheRequest, CacheStatus, LookupResult, Policy, Prompt
from reprise.domain import Decoding, Finish
from reprise.errors import Unavailable

NS = "tenant-a"


class SerialCache(FakeCache):
    """Lookups one at a time, each taking ``delay_s``: a cache whose one embedder thread is the queue.

    Fifty lookups of 20 ms each queue 1 s: past a 50 ms budget, all but the first
    two come back as timeouts (BYPASS) unless the gateway asks only once.
    """

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self._lock = asyncio.Lock()
        self.lookup_delay_s = delay_s

    async def lookup(self, request: CacheRequest, **kw: object) -> LookupResult:  # type: ignore[override]
        async def serial() -> LookupResult:
            async with self._lock:
                await asyncio.sleep(self.lookup_delay_s)
                return await FakeCache.lookup(self, request, **kw)  # type: ignore[arg-type]

        try:
            return await asyncio.wait_for(serial(), kw["timeout_s"])  # type: ignore[arg-type]
        except TimeoutError:
            from gateway.core.ports import CacheError

            raise CacheError("DEADLINE_EXCEEDED", "deadline exceeded") from None


@pytest.fixture
async def world() -> AsyncIterator[tuple[Gateway, SerialCache, FakeInference]]:
    cache, inference = SerialCache(0.02), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(cache_timeout_s=0.05, max_model_in_flight=4))
    await gw.start()
    await asyncio.sleep(0)
    yield gw, cache, inference
    await gw.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_50_identical_chats_one_lookup_one_model_run_no_bypass(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    inference.gate = asyncio.Event()
    calls = [asyncio.ensure_future(gw.chat(NS, Prompt("same question"), Policy())) for _ in range(50)]
    await asyncio.sleep(0.1)  # every lookup the gateway would make has been made (or timed out) by now
    inference.gate.set()
    out = await asyncio.gather(*calls)
    assert cache.lookups == 1 and inference.chat_calls == 1
    assert [o.cache.status for o in out] == [CacheStatus.MISS] * 50
    assert sum(o.cache.coalesced for o in out) == 49
    assert {o.reply for o in out} == {inference.reply}
    await settle()
    assert cache.stores == 1
    stats = await gw.stats(NS)
    assert (stats.counters.model_calls, stats.counters.bypassed, stats.counters.coalesced) == (1, 0, 49)


async def test_50_identical_streams_share_the_stream(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    inference.gate = asyncio.Event()

    async def stream() -> list:  # type: ignore[type-arg]
        return [d async for d in gw.chat_stream(NS, Prompt("tell me"), Policy())]

    calls = [asyncio.ensure_future(stream()) for _ in range(50)]
    await asyncio.sleep(0.1)
    inference.gate.set()
    out = await asyncio.gather(*calls)
    assert cache.lookups == 1 and inference.chat_calls == 1
    assert {"".join(d.delta for d in s) for s in out} == {inference.reply}
    assert all(s[0].cache.status is CacheStatus.MISS and s[-1].finish is Finish.STOP for s in out)
    assert sum(s[0].cache.coalesced for s in out) == 49


async def test_50_identical_classify_one_lookup(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    out = await asyncio.gather(*(gw.classify(NS, "one text", Policy()) for _ in range(50)))
    assert cache.lookups == 1 and inference.classify_calls == 1
    assert all(o.cache.status is CacheStatus.MISS for o in out)


async def test_a_burst_of_a_cached_request_is_one_lookup_reported_exact(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    await gw.chat(NS, Prompt("cached one"), Policy())
    await settle()
    gw.front.hot.clear()  # make the burst ask the cache
    lookups = cache.lookups
    out = await asyncio.gather(*(gw.chat(NS, Prompt("cached one"), Policy()) for _ in range(20)))
    assert cache.lookups == lookups + 1 and inference.chat_calls == 1
    assert all(o.cache.status is CacheStatus.EXACT for o in out)
    assert sum(o.cache.coalesced for o in out) == 19
    # The burst is over: the next request asks again (from the hot layer now) and is not "joined".
    again = await gw.chat(NS, Prompt("cached one"), Policy())
    assert again.cache.status is CacheStatus.EXACT and not again.cache.coalesced


async def test_the_leader_going_away_does_not_fail_those_that_joined(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    inference.gate = asyncio.Event()
    leader = asyncio.ensure_future(gw.chat(NS, Prompt("leaves early"), Policy()))
    await asyncio.sleep(0.01)
    follower = asyncio.ensure_future(gw.chat(NS, Prompt("leaves early"), Policy()))
    await asyncio.sleep(0.05)
    leader.cancel()
    await asyncio.sleep(0.01)
    inference.gate.set()
    r = await follower
    assert r.reply == inference.reply and r.cache.coalesced
    assert inference.chat_calls == 1 and cache.lookups == 1


async def test_an_error_reaches_every_joined_request_and_is_not_replayed(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    inference.fail_after = 1
    out = await asyncio.gather(
        *(gw.chat(NS, Prompt("breaks"), Policy()) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, Unavailable) for o in out) and inference.chat_calls == 1
    inference.fail_after = None
    r = await gw.chat(NS, Prompt("breaks"), Policy())
    assert r.cache.status is CacheStatus.MISS and not r.cache.coalesced and inference.chat_calls == 2


async def test_what_must_not_share(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    sampled = Decoding(temperature=0.9)
    await asyncio.gather(*(gw.chat(NS, Prompt("fresh", decoding=sampled), Policy()) for _ in range(3)))
    assert inference.chat_calls == 3  # sampled: each caller wants its own sample
    inference.gate = asyncio.Event()
    tenants = [asyncio.ensure_future(gw.classify(t, "same words", Policy())) for t in ("a", "b")]
    await asyncio.sleep(0.1)
    inference.gate.set()
    out = await asyncio.gather(*tenants)
    assert inference.classify_calls == 2 and not any(o.cache.coalesced for o in out)


async def test_a_straggler_before_the_write_back_lands_replays_the_flow() -> None:
    class SlowStore(FakeCache):
        def __init__(self) -> None:
            super().__init__()
            self.stored = asyncio.Event()

        async def store(self, *args, **kw):  # type: ignore[no-untyped-def]
            await self.stored.wait()
            return await super().store(*args, **kw)

    cache, inference = SlowStore(), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(cache_timeout_s=0.05))
    await gw.start()
    try:
        first = await gw.chat(NS, Prompt("late one"), Policy())
        late = await gw.chat(NS, Prompt("late one"), Policy())  # answer known, not yet cached
        assert (first.cache.coalesced, late.cache.coalesced) == (False, True)
        assert cache.lookups == 1 and inference.chat_calls == 1 and late.reply == first.reply
        cache.stored.set()
        await settle()
        after = await gw.chat(NS, Prompt("late one"), Policy())  # cached now: a hit of its own
        assert after.cache.status is CacheStatus.EXACT and not after.cache.coalesced
    finally:
        cache.stored.set()
        await gw.close()
