"""Routing across inference replicas through real servers: three tiny-model replicas on loopback (issue 25, item 4).

Where each call went is read from the gateway's router (its pick counters); that the
turns met their own prefix is read from inference's answer (``cached_tokens``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway_support import metric, start_gateway_host, unique

from gateway.core.flow import GatewayConfig
from gateway.core.ring import Route
from gateway.replicas import RoutedInference
from inference_svc.core.engine import EngineConfig
from inference_svc.server import InferenceApp
from reprise.common.v1 import common_pb2
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost

NO_CACHE = pb.CachePolicy(no_cache=True, no_store=True)
SHORT = common_pb2.DecodingParams(max_new_tokens=8)


@pytest.fixture(scope="module")
async def replicas(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[ServiceHost]]:
    hosts = []
    for i in range(3):
        cache_dir = tmp_path_factory.mktemp(f"replica-{i}")
        host = ServiceHost(InferenceApp(EngineConfig(model=str(tiny_model_dir), cache_dir=cache_dir, max_new_tokens=16)), ServerOptions(port=0))
        await host.start()
        hosts.append(host)
    yield hosts
    for host in hosts:
        await host.stop(0)


@pytest.fixture(scope="module")
async def routed_gateway(cache_host: ServiceHost, replicas: list[ServiceHost]) -> AsyncIterator[ServiceHost]:
    target = ",".join(h.address for h in replicas)
    host = await start_gateway_host(cache_host.address, target, GatewayConfig(cache_timeout_s=2.0))
    yield host
    await host.stop(0)


def router(gateway: ServiceHost) -> RoutedInference:
    routed = gateway.app.routed  # type: ignore[attr-defined]
    assert routed is not None
    return routed


async def turn(stub: pb_grpc.GatewayStub, history: list[common_pb2.Turn], text: str) -> pb.ChatResponse:
    reply = await stub.Chat(pb.ChatRequest(text=text, history=history, decoding=SHORT, cache=NO_CACHE))
    history += [
        common_pb2.Turn(role=common_pb2.ROLE_USER, content=text),
        common_pb2.Turn(role=common_pb2.ROLE_ASSISTANT, content=reply.reply),
    ]
    return reply


def went_to(routed: RoutedInference, before: Counter) -> list[tuple[str, Route]]:  # type: ignore[type-arg]
    return list((routed.picks - before).elements())


async def test_turns_of_a_conversation_meet_their_prefix_on_one_replica(routed_gateway, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub, routed = pb_grpc.GatewayStub(channel_to(routed_gateway)), router(routed_gateway)
    homes = set()
    for c in range(4):
        history: list[common_pb2.Turn] = []
        where, cached = [], []
        for t in range(4):
            before = Counter(routed.picks)
            reply = await turn(stub, history, unique(f"conversation {c} turn {t}"))
            where += went_to(routed, before)
            cached.append(reply.usage.cached_tokens)
        assert len(where) == 4 and len({m for m, _ in where}) == 1 and {r for _, r in where} == {Route.HOME}, where
        homes.add(where[0][0])
        # each later turn reused the KV of the turns before it, on the replica that held them
        assert all(cached[i] > cached[0] for i in (1, 2, 3)), cached
    assert len(homes) >= 2  # four conversations did not all hash to one replica (probability 1/27)


async def test_classify_is_spread_evenly(routed_gateway, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub, routed = pb_grpc.GatewayStub(channel_to(routed_gateway)), router(routed_gateway)
    before = Counter(routed.picks)
    for i in range(30):
        await stub.Classify(pb.ClassifyRequest(text=unique(f"label me {i}"), cache=NO_CACHE))
    per_replica = Counter(m for m, _ in went_to(routed, before))
    assert sorted(per_replica.values()) == [10, 10, 10], per_replica


async def test_a_dead_replicas_conversation_moves_to_a_live_one(cache_host, tiny_model_dir, tmp_path_factory, channel_to) -> None:  # type: ignore[no-untyped-def]
    hosts = []
    for i in range(2):
        app = InferenceApp(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp(f"dying-{i}"), max_new_tokens=16))
        hosts.append(ServiceHost(app, ServerOptions(port=0)))
        await hosts[-1].start()
    gateway = await start_gateway_host(cache_host.address, ",".join(h.address for h in hosts), GatewayConfig(cache_timeout_s=2.0))
    try:
        stub, routed = pb_grpc.GatewayStub(channel_to(gateway)), router(gateway)
        history: list[common_pb2.Turn] = []
        before = Counter(routed.picks)
        await turn(stub, history, unique("a conversation whose replica dies"))
        (home, _), = went_to(routed, before)
        dead = next(h for h in hosts if h.address == home)
        await dead.stop(0)
        before = Counter(routed.picks)
        reply = await turn(stub, history, "and then?")  # no error: the call moved
        assert reply.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
        moved = went_to(routed, before)
        live = next(h.address for h in hosts if h is not dead)
        assert moved[-1][0] == live, moved  # after a try on the dead one, or passed over at once
        before = Counter(routed.picks)
        await turn(stub, history, "and after that?")  # stays on the live replica while the other is down
        assert [m for m, _ in went_to(routed, before)] == [live]
    finally:
        await gateway.stop(0)
        for h in hosts:
            await h.stop(0)


async def test_routes_are_counted_in_metrics(routed_gateway, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(routed_gateway))
    home, spread = (metric("reprise_gateway_inference_routes_total", kind=k) for k in ("home", "spread"))
    await turn(stub, [], unique("counted"))
    await stub.Classify(pb.ClassifyRequest(text=unique("counted label"), cache=NO_CACHE))
    assert metric("reprise_gateway_inference_routes_total", kind="home") == home + 1
    assert metric("reprise_gateway_inference_routes_total", kind="spread") == spread + 1
