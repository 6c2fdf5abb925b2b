"""A burst of identical requests through real servers: one cache lookup, one model run, no BYPASS (issue 25, item 5).

Counted on the services' own request metrics (Lookup on the cache, ChatStream and
Classify on inference), so what is counted is what reached each service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gateway_support import eventually, metric, start_gateway_host, unique

from gateway.core.flow import GatewayConfig
from reprise.common.v1 import common_pb2
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.rpc.server import ServiceHost

MISS, EXACT = pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_EXACT


def calls(service: str, method: str) -> float:
    return metric("reprise_rpc_requests_total", service=service, method=method, code="OK")


def assert_one_leader(infos: list[pb.CacheInfo]) -> None:
    """One request computed the answer; the others joined it or, arriving after it was cached, hit the hot layer.

    The tiny model answers in tens of milliseconds, about as long as 50 calls take to reach
    the gateway: the last of a burst may come after the answer is in the hot layer (EXACT, hot).
    """
    assert [(i.status, i.coalesced) for i in infos].count((MISS, False)) == 1
    assert all(i.coalesced or (i.status == EXACT and i.hot) for i in infos if (i.status, i.coalesced) != (MISS, False))


@pytest.fixture
async def stub(cache_host: ServiceHost, inference_host: ServiceHost, channel_to) -> AsyncIterator[pb_grpc.GatewayStub]:  # type: ignore[no-untyped-def]
    # The shipped budget is 30 ms; 0.5 s keeps a busy CI machine from turning the one lookup
    # into a timeout. The lookup count is what shows the burst coalesced.
    host = await start_gateway_host(cache_host.address, inference_host.address, GatewayConfig(cache_timeout_s=0.5))
    stub = pb_grpc.GatewayStub(channel_to(host))
    # Requests of a burst that arrive after the answer is cached are hot hits: no lookup either.
    await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.hot_active)
    yield stub
    await host.stop(0)


async def test_50_identical_chats_one_lookup_one_model_run_no_bypass(stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.ChatRequest(text=unique("Explain bursts"), decoding=common_pb2.DecodingParams(max_new_tokens=32))
    lookups, runs = calls("cache", "Lookup"), calls("inference", "ChatStream")
    replies = await asyncio.gather(*(stub.Chat(request) for _ in range(50)))
    assert calls("cache", "Lookup") - lookups == 1
    assert calls("inference", "ChatStream") - runs == 1
    assert_one_leader([r.cache for r in replies])
    assert len({r.reply for r in replies}) == 1
    stats = await stub.Stats(pb.StatsRequest())
    assert stats.counters.bypassed == 0


async def test_50_identical_streams_and_classify(stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.ChatStreamRequest(text=unique("Stream a burst"), decoding=common_pb2.DecodingParams(max_new_tokens=32))

    async def stream() -> list[pb.ChatStreamResponse]:
        return [m async for m in stub.ChatStream(request)]

    lookups, runs = calls("cache", "Lookup"), calls("inference", "ChatStream")
    streams = await asyncio.gather(*(stream() for _ in range(50)))
    assert calls("cache", "Lookup") - lookups == 1 and calls("inference", "ChatStream") - runs == 1
    assert len({"".join(m.delta for m in s) for s in streams}) == 1
    assert all(s[-1].HasField("finish_reason") for s in streams)
    assert_one_leader([s[0].cache for s in streams])

    text = unique("Labels in a burst")
    lookups, runs = calls("cache", "Lookup"), calls("inference", "Classify")
    labels = await asyncio.gather(*(stub.Classify(pb.ClassifyRequest(text=text)) for _ in range(50)))
    assert calls("cache", "Lookup") - lookups == 1 and calls("inference", "Classify") - runs == 1
    assert_one_leader([r.cache for r in labels])
