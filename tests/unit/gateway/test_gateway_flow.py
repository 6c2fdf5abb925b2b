"""The cache-first flow against in-memory ports: hits, misses, breaker, singleflight, hot layer, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gateway_fakes import FakeCache, FakeInference, key_of

from gateway.core.breaker import BreakerConfig
from gateway.core.flow import Gateway, GatewayConfig
from gateway.core.hot import HotConfig
from gateway.core.types import CacheStatus, Invalidation, InvalidationKind, Policy, Prompt
from reprise.domain import Decoding, Finish
from reprise.errors import ResourceExhausted, Unavailable

NS = "tenant-a"


@pytest.fixture
async def world() -> AsyncIterator[tuple[Gateway, FakeCache, FakeInference]]:
    cache, inference = FakeCache(), FakeInference()
    gw = Gateway(
        cache,
        inference,
        GatewayConfig(cache_timeout_s=0.05, breaker=BreakerConfig(failure_threshold=2, open_s=0.2), max_model_in_flight=4),
    )
    await gw.start()
    await asyncio.sleep(0)  # let the invalidation watch subscribe
    yield gw, cache, inference
    await gw.close()


async def settle() -> None:
    """Let background write-backs run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_miss_then_store_then_hot_hit(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    first = await gw.classify(NS, "a good day", Policy())
    assert first.cache.status is CacheStatus.MISS and first.cache.store and first.cache.key
    assert first.timings.inference_ms > 0 and "lookup" in first.timings.stages_ms
    await settle()
    assert cache.stores == 1
    again = await gw.classify(NS, "a good day", Policy())
    # our own write-back went into the hot layer: no cache round trip at all
    assert again.cache.status is CacheStatus.EXACT and again.cache.hot
    assert again.result == first.result and again.timings.inference_ms == 0
    assert cache.lookups == 1 and inference.classify_calls == 1
    # another spelling: the cache (not the hot layer) knows it is the same key
    other = await gw.classify(NS, "A GOOD DAY ", Policy())
    assert other.cache.status is CacheStatus.EXACT and not other.cache.hot
    assert cache.lookups == 2


async def test_invalidation_event_drops_hot_entry(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    await gw.chat(NS, Prompt("hello there"), Policy())
    await settle()
    hot = await gw.chat(NS, Prompt("hello there"), Policy())
    assert hot.cache.hot
    cache.invalidate_key(hot.cache.key)
    await settle()
    after = await gw.chat(NS, Prompt("hello there"), Policy())
    assert after.cache.status is CacheStatus.MISS
    assert inference.chat_calls == 2


async def test_broken_watch_turns_hot_layer_off(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, _ = world
    await gw.classify(NS, "a good day", Policy())
    await settle()
    assert gw.front.hot.active and len(gw.front.hot) == 1
    cache.publish(None)  # the stream breaks
    await settle()
    assert not gw.front.hot.active and len(gw.front.hot) == 0
    r = await gw.classify(NS, "a good day", Policy())
    assert r.cache.status is CacheStatus.EXACT and not r.cache.hot


async def test_no_hot_layer_without_watch() -> None:
    cache, inference = FakeCache(), FakeInference()
    cache.watchable = False
    gw = Gateway(cache, inference, GatewayConfig(hot=HotConfig(max_entries=100)))
    await gw.start()
    try:
        await gw.classify(NS, "text", Policy())
        await settle()
        r = await gw.classify(NS, "text", Policy())
        assert r.cache.status is CacheStatus.EXACT and not r.cache.hot
    finally:
        await gw.close()


async def test_cache_errors_are_misses_and_open_the_breaker(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    cache.fail = "UNAVAILABLE"
    r = await gw.classify(NS, "text 0", Policy())
    assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "cache error: UNAVAILABLE"
    await settle()  # its write-back fails too: the second failure in a row opens the breaker
    assert gw.front.breaker.state.value == "open"
    lookups = cache.lookups
    r = await gw.classify(NS, "text 3", Policy())
    assert r.cache.reason == "circuit breaker open" and not r.cache.store
    assert cache.lookups == lookups  # an open breaker costs the cache nothing
    cache.fail = None
    await asyncio.sleep(0.25)
    r = await gw.classify(NS, "text 4", Policy())  # the half-open probe
    assert r.cache.status is CacheStatus.MISS
    assert gw.front.breaker.state.value == "closed"
    assert inference.classify_calls == 3


async def test_slow_cache_times_out_within_budget(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, _ = world
    await gw.classify(NS, "a first miss: the gateway learns that a miss is cheap", Policy())
    cache.delay_s = 5.0
    r = await gw.classify(NS, "slow", Policy())
    assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "cache timeout"
    assert r.timings.stages_ms["lookup"] < 1000  # budget 50 ms; generous for a busy machine


async def test_a_cold_gateway_waits_for_a_slow_cache_until_it_knows_what_a_miss_costs(world) -> None:  # type: ignore[no-untyped-def]
    """Before any miss is answered the lookup may take the ceiling (1 s): a gateway restarted under load
    would otherwise send its whole first burst to the model. Once a miss is measured, the budget rules."""
    gw, cache, _ = world
    cache.delay_s = 0.3  # six times the 50 ms budget
    r = await gw.classify(NS, "the first request this gateway sees", Policy())
    assert r.cache.status is CacheStatus.MISS, r.cache  # waited for the cache instead of bypassing it
    assert 250 <= r.timings.stages_ms["lookup"] < 1000
    r = await gw.classify(NS, "the second request, after a measured miss", Policy())
    assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "cache timeout"


async def test_invalid_argument_from_cache_does_not_trip_breaker(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, _ = world
    cache.fail = "INVALID_ARGUMENT"
    for i in range(4):
        await gw.classify(NS, f"t{i}", Policy())
    assert gw.front.breaker.state.value == "closed"


async def test_singleflight_50_identical_misses_one_model_call(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    inference.gate = asyncio.Event()
    calls = [asyncio.ensure_future(gw.classify(NS, "same text", Policy())) for _ in range(50)]
    await asyncio.sleep(0.05)
    inference.gate.set()
    out = await asyncio.gather(*calls)
    assert inference.classify_calls == 1
    assert len({o.result for o in out}) == 1
    assert sum(o.cache.coalesced for o in out) == 49
    assert gw.model_calls.in_flight == 0
    await settle()
    assert cache.stores == 1


async def test_streamed_singleflight_joiner_gets_whole_stream(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    inference.gate = asyncio.Event()

    async def stream() -> list:  # type: ignore[type-arg]
        return [d async for d in gw.chat_stream(NS, Prompt("tell me"), Policy())]

    a = asyncio.ensure_future(stream())
    await asyncio.sleep(0.02)
    b = asyncio.ensure_future(stream())
    await asyncio.sleep(0.02)
    inference.gate.set()
    sa, sb = await a, await b
    assert inference.chat_calls == 1
    assert "".join(d.delta for d in sa) == "".join(d.delta for d in sb) == inference.reply
    assert sa[0].cache is not None and sb[0].cache is not None and sb[0].cache.coalesced
    assert sa[-1].finish is Finish.STOP and sb[-1].finish is Finish.STOP


async def test_failed_stream_is_not_stored_and_not_joined(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    inference.fail_after = 2
    got = []
    with pytest.raises(Unavailable):
        async for d in gw.chat_stream(NS, Prompt("break"), Policy()):
            got.append(d)
    assert len(got) == 2 and got[0].cache.status is CacheStatus.MISS
    await settle()
    assert cache.stores == 0
    inference.fail_after = None
    r = await gw.chat(NS, Prompt("break"), Policy())
    assert r.cache.status is CacheStatus.MISS and not r.cache.coalesced
    assert inference.chat_calls == 2


async def test_cached_reply_replays_as_stream_in_pieces(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    live = [d async for d in gw.chat_stream(NS, Prompt("story"), Policy())]
    await settle()
    replay = [d async for d in gw.chat_stream(NS, Prompt("story"), Policy())]
    assert replay[0].cache.status is CacheStatus.EXACT and len(replay) > 1
    assert all(d.cache is None for d in replay[1:]) and all(d.timings is None for d in replay[:-1])
    assert "".join(d.delta for d in replay) == "".join(d.delta for d in live)
    assert replay[-1].finish == live[-1].finish and replay[-1].usage == live[-1].usage
    assert "replay" in replay[-1].timings.stages_ms
    assert inference.chat_calls == 1


async def test_policies(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    r = await gw.chat(NS, Prompt("p1"), Policy(no_store=True))
    await settle()
    assert not r.cache.store and cache.stores == 0
    r = await gw.chat(NS, Prompt("p1"), Policy(no_cache=True))
    assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "no_cache policy"
    await settle()
    assert cache.stores == 1  # no_cache still stores
    sampled = Decoding(temperature=0.9)
    r = await gw.chat(NS, Prompt("p2", decoding=sampled), Policy())
    assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "sampled decoding" and not r.cache.store
    await settle()
    assert cache.stores == 1
    r = await gw.chat(NS, Prompt("p2", decoding=sampled), Policy(cache_sampled=True))
    await settle()
    assert r.cache.store and cache.stores == 2
    # max_age 0: an entry stored before now is too old (hot layer and cache both honour it)
    await asyncio.sleep(0.01)
    r = await gw.chat(NS, Prompt("p1"), Policy(max_age_s=0))
    assert r.cache.status is CacheStatus.MISS


async def test_tenants_do_not_share(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    await gw.classify("a", "shared words", Policy())
    await settle()
    r = await gw.classify("b", "shared words", Policy())
    assert r.cache.status is CacheStatus.MISS
    assert inference.classify_calls == 2
    assert (await gw.stats("a")).counters.misses == 1


async def test_model_calls_are_bounded(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    inference.gate = asyncio.Event()
    busy = [asyncio.ensure_future(gw.classify(NS, f"busy {i}", Policy())) for i in range(4)]
    await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted):
        await gw.classify(NS, "one more", Policy())
    # a hit does not need the model: still served
    inference.gate.set()
    await asyncio.gather(*busy)
    assert gw.model_calls.in_flight == 0 and gw.model_calls.rejected == 1


async def test_deadline_reaches_inference(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    await gw.classify(NS, "deadline", Policy(), timeout_s=1.5)
    assert inference.timeouts == [1.5]


async def test_analyze_runs_requested_parts(world) -> None:  # type: ignore[no-untyped-def]
    gw, _, inference = world
    both = await gw.analyze(NS, Prompt("bad food"), Policy())
    assert both.sentiment is not None and both.chat is not None
    assert both.sentiment.result.label.value == "negative"
    only = await gw.analyze(NS, Prompt("bad food 2"), Policy(), tasks=("chat",))
    assert only.sentiment is None and only.chat is not None


async def test_hot_key_matches_cache_key_helper() -> None:
    # guard for the fake itself: spelling variants share a key, tenants do not
    from gateway.core.types import CacheRequest

    from gateway_fakes import MODEL

    a = CacheRequest("a", "chat", MODEL, Prompt("Hi"))
    assert key_of(a) == key_of(CacheRequest("a", "chat", MODEL, Prompt(" hi")))
    assert key_of(a) != key_of(CacheRequest("b", "chat", MODEL, Prompt("Hi")))
    assert Invalidation(InvalidationKind.KEY, key_of(a)).value == key_of(a)


async def test_hot_copy_past_its_age_is_served_when_the_cache_fails() -> None:
    cache, inference = FakeCache(), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(hot=HotConfig(max_age_s=0.0)))
    await gw.start()
    await asyncio.sleep(0)
    try:
        await gw.classify(NS, "kept", Policy())
        await settle()
        again = await gw.classify(NS, "kept", Policy())  # hot copy too old: the cache is asked
        assert again.cache.status is CacheStatus.EXACT and not again.cache.hot
        cache.fail = "UNAVAILABLE"
        r = await gw.classify(NS, "kept", Policy())
        assert r.cache.status is CacheStatus.EXACT and r.cache.hot
        assert r.cache.reason == "hot copy served: cache error: UNAVAILABLE"
        assert inference.classify_calls == 1
    finally:
        await gw.close()


async def test_streamed_miss_is_stored_even_if_the_reader_stops_at_the_last_piece(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    stream = gw.chat_stream(NS, Prompt("stop early"), Policy())
    async for d in stream:
        if d.finish is not None:
            break  # what the servicer effectively does: the last message is sent, the call ends
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert cache.stores == 1
    again = await gw.chat(NS, Prompt("stop early"), Policy())
    assert again.cache.status is CacheStatus.EXACT and inference.chat_calls == 1


async def test_a_chat_lookup_gets_a_longer_budget_than_a_classify(world) -> None:  # type: ignore[no-untyped-def]
    """A chat miss costs seconds, a classify miss ~0.1 s: a 70 ms lookup is given up for Classify only."""
    gw, cache, _ = world
    await gw.chat(NS, Prompt("a chat stored earlier"), Policy())
    await gw.classify(NS, "a text stored earlier", Policy())
    for _ in range(50):  # the write-backs run in the background
        if len(cache.data) >= 2:
            break
        await asyncio.sleep(0.01)
    gw.front.hot.clear()  # every hit below must ask the (slow) cache
    cache.delay_s = 0.07  # over the classify budget (50 ms here), under chat's (100 ms by default)
    chat = await gw.chat(NS, Prompt("a chat stored earlier"), Policy())
    assert chat.cache.status is CacheStatus.EXACT, chat.cache
    r = await gw.classify(NS, "a text stored earlier", Policy())
    assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "cache timeout"


def test_per_task_lookup_budget_flags() -> None:
    from gateway.server import build_parser, config_from_args

    defaults = config_from_args(build_parser().parse_args([])).task_defaults
    assert defaults["chat"].cache_timeout_s == 0.1 and defaults["sentiment"].cache_timeout_s is None
    set_ = config_from_args(build_parser().parse_args(["--chat-cache-timeout-ms", "250", "--sentiment-cache-timeout-ms", "20"]))
    assert set_.task_defaults["chat"].cache_timeout_s == 0.25 and set_.task_defaults["sentiment"].cache_timeout_s == 0.02


async def _stored_then_cold(gw: Gateway, cache: FakeCache, text: str):  # type: ignore[no-untyped-def]
    """Classify ``text`` (a miss, stored), wait out the write-back and the finished call's linger, and empty
    the hot layer: the next Classify of ``text`` must ask the cache. Returns the first outcome."""
    first = await gw.classify(NS, text, Policy())
    for _ in range(50):
        if cache.data:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # past the finished call's linger (write-back + one lookup budget)
    gw.front.hot.clear()
    return first


@pytest.mark.parametrize("share, status", [(0.25, CacheStatus.EXACT), (0.0, CacheStatus.BYPASS)])
async def test_a_busy_cache_is_waited_for_longer_when_misses_cost_more(share: float, status: CacheStatus) -> None:
    """A slow model (0.4 s a miss) raises the lookup budget to a share of that (0.1 s): a 70 ms lookup is
    then waited for instead of sending one more request to the model. With the share at 0 it is not."""
    cache, inference = FakeCache(), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(cache_timeout_s=0.05, cache_timeout_miss_share=share))
    await gw.start()
    try:
        inference.gate = asyncio.Event()
        asyncio.get_running_loop().call_later(0.4, inference.gate.set)
        first = await _stored_then_cold(gw, cache, "a text the model was slow on")
        assert first.cache.status is CacheStatus.MISS
        cache.delay_s = 0.07  # over the fixed classify budget (50 ms), under 0.25 x 0.4 s
        again = await gw.classify(NS, "a text the model was slow on", Policy())
        assert again.cache.status is status, again.cache
        assert inference.classify_calls == (1 if status is CacheStatus.EXACT else 2)
    finally:
        await gw.close()


def test_the_lookup_budget_is_a_share_of_the_miss_cost_between_the_fixed_budget_and_the_cap() -> None:
    from gateway.core.front import CacheFront, FrontConfig, MissCost
    from gateway.core.policy import Policies

    cost = MissCost(weight=0.5)
    assert cost.expected("chat") == 0.0
    cost.observe("chat", 2.0)
    cost.observe("chat", 1.0)
    assert cost.expected("chat") == 1.5 and cost.expected("sentiment") == 0.0
    front = CacheFront(FakeCache(), None, None, None, FrontConfig(lookup_timeout_s=0.03, lookup_miss_share=0.25, lookup_timeout_max_s=1.0))  # type: ignore[arg-type]
    chat, classify = Policies().plan("chat", Policy()), Policies().plan("sentiment", Policy())
    # No miss answered yet: what one costs is unknown, so the lookup may take the cap (a cold gateway under load).
    assert front.lookup_budget("chat", chat) == 1.0 and front.lookup_budget("sentiment", classify) == 1.0
    assert front.lookup_budget("sentiment", classify, timeout_s=2.0) == 0.5
    front.miss_cost = MissCost(weight=1.0)  # each answer replaces the average: one observation per step below
    front.miss_cost.observe("sentiment", 0.05)  # a cheap miss: the fixed budget again
    assert front.lookup_budget("sentiment", classify) == 0.03
    front.miss_cost.observe("chat", 0.2)
    assert front.lookup_budget("chat", chat) == 0.1
    front.miss_cost.observe("chat", 2.0)
    assert front.lookup_budget("chat", chat) == 0.5
    front.miss_cost.observe("chat", 60.0)  # a queue at inference: the cap holds
    assert front.lookup_budget("chat", chat) == 1.0
    # A caller with 2 s left: the lookup may grow to a quarter of that, leaving the model time for a miss;
    # the fixed budget is kept whatever the deadline, within the deadline itself.
    assert front.lookup_budget("chat", chat, timeout_s=2.0) == 0.5
    assert front.lookup_budget("chat", chat, timeout_s=0.2) == 0.1
    assert front.lookup_budget("chat", chat, timeout_s=0.05) == 0.05
    assert front.lookup_budget("sentiment", classify) == 0.03


def test_miss_share_flags() -> None:
    from gateway.server import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args([]))
    assert cfg.cache_timeout_miss_share == 0.25 and cfg.cache_timeout_max_s == 1.0
    cfg = config_from_args(build_parser().parse_args(["--cache-timeout-miss-share", "0", "--cache-timeout-max-ms", "400"]))
    assert cfg.cache_timeout_miss_share == 0.0 and cfg.cache_timeout_max_s == 0.4
    with pytest.raises(SystemExit):
        config_from_args(build_parser().parse_args(["--cache-timeout-miss-share", "1.5"]))


def test_a_miss_costs_at_least_what_the_running_model_calls_have_taken() -> None:
    """Before any miss is answered, calls still running already raise the expected cost (the start of a load)."""
    import time

    from gateway.core.front import MissCost

    cost = MissCost()
    slow = cost.begin("chat")
    time.sleep(0.05)
    assert cost.expected("chat") >= 0.05 and cost.expected("sentiment") == 0.0
    cost.end("chat", slow, answered=False)  # cancelled or failed: not an answer time
    assert cost.expected("chat") == 0.0
    quick = cost.begin("chat")
    cost.end("chat", quick, answered=True)
    cost.end("chat", quick, answered=True)  # a second end is a no-op
    assert 0.0 < cost.expected("chat") < 0.05


async def test_the_model_call_in_flight_raises_the_budget_of_the_lookups_behind_it(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    inference.gate = asyncio.Event()
    running = asyncio.create_task(gw.chat(NS, Prompt("the first chat of a load"), Policy()))
    await asyncio.sleep(0.5)  # the model holds it: a chat miss costs at least 0.5 s now
    assert gw.front.lookup_budget("chat", gw._policies.plan("chat", Policy())) >= 0.125
    inference.gate.set()
    assert (await running).cache.status is CacheStatus.MISS


async def test_a_slow_lookup_is_waited_for_while_the_model_could_not_take_the_request() -> None:
    """At its budget a lookup is given up only if the model has a free slot: otherwise the miss would be
    refused (RESOURCE_EXHAUSTED), which is worse than a slow cache."""
    cache, inference = FakeCache(), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(cache_timeout_s=0.05, max_model_in_flight=1))
    await gw.start()
    try:
        await _stored_then_cold(gw, cache, "a text stored before the load")
        cache.delay_s = 0.2  # over the 50 ms budget
        inference.gate = asyncio.Event()
        busy = asyncio.create_task(gw.chat(NS, Prompt("a long chat holding the only model slot"), Policy()))
        for _ in range(100):
            if gw.model_calls.full:
                break
            await asyncio.sleep(0.01)
        assert gw.model_calls.full
        r = await gw.classify(NS, "a text stored before the load", Policy())
        assert r.cache.status is CacheStatus.EXACT, r.cache  # waited ~0.2 s instead of a refusal
        inference.gate.set()
        await busy
        gw.front.hot.clear()  # the hit above went into the hot layer
        r = await gw.classify(NS, "a text stored before the load", Policy())
        assert r.cache.status is CacheStatus.BYPASS and r.cache.reason == "cache timeout"  # the model is free again
    finally:
        await gw.close()


def test_lookup_patience_is_the_cap_within_the_deadline_share_and_off_with_the_share() -> None:
    from gateway.core.front import CacheFront, FrontConfig
    from gateway.core.policy import Policies

    classify = Policies().plan("sentiment", Policy())
    front = CacheFront(FakeCache(), None, None, None, FrontConfig(lookup_timeout_s=0.03))  # type: ignore[arg-type]
    def patience(f: CacheFront, timeout_s: float | None = None) -> float:
        return f.lookup_patience(f.lookup_budget("sentiment", classify, timeout_s), timeout_s)

    assert patience(front) == 1.0
    assert patience(front, timeout_s=2.0) == 0.5
    assert patience(front, timeout_s=0.02) == 0.02
    off = CacheFront(FakeCache(), None, None, None, FrontConfig(lookup_timeout_s=0.03, lookup_miss_share=0.0))  # type: ignore[arg-type]
    assert patience(off) == 0.03


async def test_after_inference_refused_a_call_a_slow_lookup_is_waited_for() -> None:
    """Inference answering RESOURCE_EXHAUSTED (its admission) marks the model full for a second: a lookup
    reaching its budget then is waited for rather than sent to a model that is refusing work."""
    cache, inference = FakeCache(), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(cache_timeout_s=0.05))
    await gw.start()
    try:
        await _stored_then_cold(gw, cache, "a text stored before the load")
        inference.refuse = True
        with pytest.raises(ResourceExhausted):
            await gw.classify(NS, "a new text the model refuses", Policy())
        cache.delay_s = 0.2  # over the 50 ms budget
        r = await gw.classify(NS, "a text stored before the load", Policy())
        assert r.cache.status is CacheStatus.EXACT, r.cache
    finally:
        await gw.close()
