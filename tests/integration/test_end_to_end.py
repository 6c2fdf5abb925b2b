"""The walking skeleton: gateway -> cache -> inference -> write-back -> hit, through real servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devtools.devstack import RedisServer
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import start_cache, start_gateway


async def _eventually_exact(call, request, attempts: int = 50):  # type: ignore[no-untyped-def]
    """Repeat ``call`` until it answers from the exact tier (the write-back is asynchronous)."""
    for _ in range(attempts):
        response = await call(request)
        if response.cache.status == pb.CACHE_STATUS_EXACT:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"never an exact hit; last status {response.cache.status}")


async def test_classify_miss_then_exact_hit(gateway_host, channel_to) -> None:
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    request = pb.ClassifyRequest(text="The battery lasts all day and I love it")
    first = await stub.Classify(request)
    assert first.cache.status == pb.CACHE_STATUS_MISS
    assert first.result.label in (1, 2) and 0.5 <= first.result.probability <= 1.0
    assert first.usage.prompt_tokens > 0
    hit = await _eventually_exact(stub.Classify, request)
    assert hit.result == first.result
    assert hit.timings.inference_ms == 0.0


async def test_chat_miss_then_exact_hit_same_reply(gateway_host, channel_to) -> None:
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    request = pb.ChatRequest(text="Tell me a joke about cats")
    first = await stub.Chat(request)
    assert first.cache.status == pb.CACHE_STATUS_MISS
    assert first.usage.completion_tokens > 0
    hit = await _eventually_exact(stub.Chat, request)
    assert hit.reply == first.reply
    assert hit.finish_reason == first.finish_reason
    # Normalization: the same question typed differently is the same exact key.
    again = await stub.Chat(pb.ChatRequest(text="  tell me a JOKE about cats?  "))
    assert again.cache.status == pb.CACHE_STATUS_EXACT and again.reply == first.reply


async def test_stream_replays_cached_reply_in_same_format(gateway_host, channel_to) -> None:
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    request = pb.ChatStreamRequest(text="What is the capital of France")
    live = [m async for m in stub.ChatStream(request)]
    assert live[0].cache.status == pb.CACHE_STATUS_MISS
    assert live[-1].HasField("finish_reason")
    for _ in range(50):
        replay = [m async for m in stub.ChatStream(request)]
        if replay[0].cache.status == pb.CACHE_STATUS_EXACT:
            break
        await asyncio.sleep(0.05)
    assert replay[0].cache.status == pb.CACHE_STATUS_EXACT
    assert "".join(m.delta for m in replay) == "".join(m.delta for m in live)
    assert replay[-1].finish_reason == live[-1].finish_reason
    assert replay[-1].usage == live[-1].usage


async def test_analyze_returns_both_parts(gateway_host, channel_to) -> None:
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    r = await stub.Analyze(pb.AnalyzeRequest(text="这家餐厅的菜太难吃了"))
    assert r.sentiment.label in (1, 2)
    assert r.reply_cache.status in (pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_EXACT)
    assert r.usage.prompt_tokens > 0


@pytest.mark.parametrize("host_name", ["gateway_host", "cache_host", "inference_host"])
async def test_health_serving_and_reflection(host_name, request, channel_to) -> None:
    host = request.getfixturevalue(host_name)
    channel = channel_to(host)
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [r async for r in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert "grpc.health.v1.Health" in names
    assert any(n.startswith("reprise.") for n in names)


async def test_empty_text_is_invalid_argument(gateway_host, channel_to) -> None:
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Classify(pb.ClassifyRequest(text="   "))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in err.value.details() and "empty" in err.value.details()


async def test_gateway_answers_when_redis_is_down(inference_host, channel_to) -> None:
    redis = RedisServer().start()
    cache = await start_cache(redis.url)
    gateway = await start_gateway(cache.address, inference_host.address)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        ok = await stub.Classify(pb.ClassifyRequest(text="redis is fine right now"))
        assert ok.cache.status == pb.CACHE_STATUS_MISS
        redis.stop()
        r = await stub.Classify(pb.ClassifyRequest(text="redis just went away"))
        assert r.cache.status == pb.CACHE_STATUS_BYPASS
        assert r.result.label in (1, 2)
        c = await stub.Chat(pb.ChatRequest(text="still there?"))
        assert c.usage.completion_tokens > 0
    finally:
        await gateway.stop(0)
        await cache.stop(0)
        redis.stop()
