"""A broken cache never breaks a request; overload and deadlines end quickly; bad input is named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from gateway_support import StallProxy, eventually, start_exact_cache, start_gateway_host, unique

from gateway.core.breaker import BreakerConfig
from gateway.core.flow import GatewayConfig
from gateway.core.limits import Limits
from reprise.common.v1 import common_pb2
from devtools.devstack import RedisServer
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc

MISS, EXACT, BYPASS = pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_EXACT, pb.CACHE_STATUS_BYPASS


async def test_breaker_opens_when_cache_is_killed_and_closes_when_it_is_back(redis_server, inference_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    cache = await start_exact_cache(redis_server.url)
    port = cache.port
    config = GatewayConfig(cache_timeout_s=1.0, breaker=BreakerConfig(failure_threshold=2, open_s=0.3, max_open_s=0.6))
    gateway = await start_gateway_host(cache.address, inference_host.address, config)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        text = unique("breaker")
        await stub.Classify(pb.ClassifyRequest(text=text))
        await eventually(lambda: stub.Classify(pb.ClassifyRequest(text=text)), lambda r: r.cache.status == EXACT)

        await cache.stop(0)  # the cache process is gone
        reasons = []
        for i in range(6):
            r = await stub.Classify(pb.ClassifyRequest(text=f"{text} {i}"))
            assert r.cache.status == BYPASS and r.result.label in (1, 2)  # every request still answered
            reasons.append(r.cache.reason)
        assert reasons[0].startswith("cache error") and "circuit breaker open" in reasons[2:]
        stats = await stub.Stats(pb.StatsRequest())
        assert stats.breaker_state in ("open", "half_open") and not stats.HasField("cache_entries")
        chat = await stub.Chat(pb.ChatRequest(text=unique("still there?")))
        assert chat.cache.status == BYPASS and chat.usage.completion_tokens > 0

        cache = await start_exact_cache(redis_server.url, port=port)  # back, same address
        # The next probe finds it: the breaker closes and the old entry is served again.
        r = await eventually(lambda: stub.Classify(pb.ClassifyRequest(text=text)), lambda r: r.cache.status == EXACT)
        assert r.cache.status == EXACT
        assert (await stub.Stats(pb.StatsRequest())).breaker_state == "closed"
    finally:
        await gateway.stop(0)
        await cache.stop(0)


async def test_cache_with_dead_redis_costs_at_most_the_budget(inference_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    redis = RedisServer().start()
    cache = await start_exact_cache(redis.url)
    config = GatewayConfig(cache_timeout_s=0.2, breaker=BreakerConfig(failure_threshold=2, open_s=30))
    gateway = await start_gateway_host(cache.address, inference_host.address, config)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        redis.stop()  # the cache service is up but cannot reach Redis
        first = await stub.Classify(pb.ClassifyRequest(text=unique("redis gone")))
        assert first.cache.status == BYPASS
        assert first.timings.cache_ms < 2000  # bounded by the budget (0.2 s), not by Redis' 2 s socket timeout
        await stub.Classify(pb.ClassifyRequest(text=unique("redis gone")))
        after = await stub.Classify(pb.ClassifyRequest(text=unique("redis gone")))
        assert after.cache.reason == "circuit breaker open"
    finally:
        await gateway.stop(0)
        await cache.stop(0)
        redis.stop()


@pytest.fixture
async def stalled_inference(inference_host) -> AsyncIterator[StallProxy]:  # type: ignore[no-untyped-def]
    """The real inference service behind a proxy the test can stall (a hung model)."""
    proxy = await StallProxy(inference_host.address).start()
    yield proxy
    await proxy.stop()


async def test_model_calls_are_bounded_resource_exhausted_at_once(cache_host, stalled_inference, channel_to) -> None:  # type: ignore[no-untyped-def]
    gateway = await start_gateway_host(
        cache_host.address, stalled_inference.address, GatewayConfig(cache_timeout_s=2.0, max_model_in_flight=1)
    )
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        stalled_inference.pause()
        stuck = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(text=unique("stuck")), timeout=30))
        await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.model_in_flight == 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            # a hang here would end in DEADLINE_EXCEEDED, not RESOURCE_EXHAUSTED
            await stub.Classify(pb.ClassifyRequest(text=unique("one more")), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "model calls" in err.value.details()
        stalled_inference.resume()
        assert (await stuck).cache.status == MISS
        stats = await stub.Stats(pb.StatsRequest())
        assert stats.model_in_flight == 0 and stats.rejected_overload == 1
        assert (await stub.Classify(pb.ClassifyRequest(text=unique("one more")))).cache.status == MISS
    finally:
        await gateway.stop(0)


async def test_requests_in_flight_are_bounded(cache_host, stalled_inference, channel_to) -> None:  # type: ignore[no-untyped-def]
    gateway = await start_gateway_host(
        cache_host.address, stalled_inference.address, GatewayConfig(cache_timeout_s=2.0, max_in_flight=2)
    )
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        stalled_inference.pause()
        stuck = [
            asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(text=unique("hold")), timeout=30)) for _ in range(2)
        ]
        await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.in_flight == 2)  # Stats is never limited
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Classify(pb.ClassifyRequest(text="third"), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gateway requests" in err.value.details()
        stalled_inference.resume()
        assert all(r.cache.status == MISS for r in await asyncio.gather(*stuck))
    finally:
        await gateway.stop(0)


async def test_deadline_ends_a_stuck_model_call_and_frees_its_slot(cache_host, stalled_inference, channel_to) -> None:  # type: ignore[no-untyped-def]
    gateway = await start_gateway_host(cache_host.address, stalled_inference.address)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        stalled_inference.pause()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Chat(pb.ChatRequest(text=unique("take your time")), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The call behind it ended with the deadline: no orphaned model call holds a slot.
        await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.model_in_flight == 0 and s.in_flight == 0)
    finally:
        await gateway.stop(0)


async def test_abandoned_stream_is_not_stored(cache_host, stalled_inference, channel_to) -> None:  # type: ignore[no-untyped-def]
    gateway = await start_gateway_host(cache_host.address, stalled_inference.address)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        request = pb.ChatStreamRequest(text=unique("Write a long story"), decoding=common_pb2.DecodingParams(max_new_tokens=64))
        # The model "hangs" (a deterministic stand-in for "the reply is not finished yet") ...
        stalled_inference.pause()
        call = stub.ChatStream(request)
        await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.model_in_flight == 1)
        call.cancel()  # ... and the caller gives up: the model call is cancelled with it
        await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.model_in_flight == 0)
        stalled_inference.resume()
        await asyncio.sleep(0.3)  # a write-back, had there been one, would have landed by now
        again = stub.ChatStream(request)
        head = await again.read()
        again.cancel()
        # The incomplete reply was neither stored nor is its (cancelled) flight joined.
        assert head.cache.status == MISS and not head.cache.coalesced
    finally:
        await gateway.stop(0)


LONG = "x" * 8_001


@pytest.mark.parametrize(
    ("rpc", "request_", "field"),
    [
        ("Classify", pb.ClassifyRequest(text=""), "text"),
        ("Classify", pb.ClassifyRequest(text=LONG), "text"),
        ("Classify", pb.ClassifyRequest(text="ok", cache=pb.CachePolicy(min_similarity=1.5)), "cache.min_similarity"),
        ("Classify", pb.ClassifyRequest(text="ok", cache=pb.CachePolicy(ttl_seconds=0)), "cache.ttl_seconds"),
        ("Chat", pb.ChatRequest(text="ok", system_prompt="s" * 4_001), "system_prompt"),
        ("Chat", pb.ChatRequest(text="ok", history=[common_pb2.Turn(role=1, content="hi")] * 33), "history"),
        ("Chat", pb.ChatRequest(text="ok", history=[common_pb2.Turn(role=2, content="hi")]), "history[0].role"),
        ("Chat", pb.ChatRequest(text="ok", history=[common_pb2.Turn(role=0, content="hi")]), "history[0].role"),
        ("Chat", pb.ChatRequest(text="ok", history=[common_pb2.Turn(role=1, content=" ")]), "history[0].content"),
        ("Chat", pb.ChatRequest(text="ok", decoding=common_pb2.DecodingParams(temperature=3)), "decoding.temperature"),
        ("Chat", pb.ChatRequest(text="ok", decoding=common_pb2.DecodingParams(top_p=1.5)), "decoding.top_p"),
        ("Chat", pb.ChatRequest(text="ok", decoding=common_pb2.DecodingParams(max_new_tokens=5000)), "decoding.max_new_tokens"),
        ("Chat", pb.ChatRequest(text="ok", decoding=common_pb2.DecodingParams(stop=[""])), "decoding.stop[0]"),
        ("Chat", pb.ChatRequest(text="ok", decoding=common_pb2.DecodingParams(stop=["s"] * 9)), "decoding.stop"),
        ("ChatStream", pb.ChatStreamRequest(text=" \n "), "text"),
        ("Analyze", pb.AnalyzeRequest(text="ok", tasks=["translate"]), "tasks[0]"),
        ("Analyze", pb.AnalyzeRequest(text="ok", decoding=common_pb2.DecodingParams(temperature=-1)), "decoding.temperature"),
    ],
)
async def test_each_validation_error_names_the_field(gateway_host, channel_to, rpc: str, request_, field: str) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        call = getattr(stub, rpc)(request_)
        if rpc == "ChatStream":
            [m async for m in call]
        else:
            await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


async def test_oversized_request_is_invalid_argument(cache_host, inference_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    config = GatewayConfig(cache_timeout_s=2.0, limits=Limits(max_request_bytes=2_000))
    gateway = await start_gateway_host(cache_host.address, inference_host.address, config)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        history = [common_pb2.Turn(role=1 + i % 2, content="y" * 500) for i in range(6)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Chat(pb.ChatRequest(text="hi", history=history))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("request:") and "limit is 2000" in err.value.details()
    finally:
        await gateway.stop(0)
