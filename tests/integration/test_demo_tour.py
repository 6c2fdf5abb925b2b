"""`make demo`'s tour against the real servers (tiny model): first asks miss, repeats are never computed again."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.core.flow import GatewayConfig
from devtools import demo
from devtools.devstack import RedisServer
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import start_cache, start_gateway


async def test_demo_tour_computes_each_question_once(inference_host, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    # An empty cache of its own, like `make demo`'s: other tests ask the same questions.
    redis = RedisServer().start()
    cache = await start_cache(redis.url)
    gateway = await start_gateway(cache.address, inference_host.address, GatewayConfig(cache_timeout_s=2.0))
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            # The tour is blocking client code; the servers run on this event loop.
            returned = await asyncio.to_thread(demo.run_tour, pb_grpc.GatewayStub(channel))
    finally:
        await gateway.stop(0)
        await cache.stop(0)
        redis.stop()
    rows = [line.split(None, 2)[:2] for line in capsys.readouterr().out.splitlines() if line.strip()]
    calls = [(call, status) for call, status in rows if call in ("Classify", "Chat", "Analyze", "ChatStream")]
    assert [c for c, _ in calls] == ["Classify"] * 3 + ["Chat"] * 2 + ["Analyze"] * 2 + ["ChatStream"]
    statuses = [s for _, s in calls]
    assert returned == statuses  # main() decides on the MISS+join footnote from these
    first = [statuses[0], statuses[1], statuses[3], statuses[5]]  # the first time each question is asked
    repeats = [statuses[2], statuses[4], statuses[6], statuses[7]]
    assert first == ["MISS"] * 4, calls
    # A repeat is a cache hit, or joins the computation still being stored: never computed twice.
    assert all(s in ("EXACT", "MISS+join") for s in repeats), calls
    assert statuses[7] == "EXACT", calls  # by the stream, the chat reply has long been stored
