"""One trace per request across the three services, with an in-memory span exporter.

A miss: gateway -> cache lookup (exact tier) -> inference (queue, prefill,
decode) -> write-back, the write-back linked to the request span. A hit: the
cache tier spans and no inference span. Spans never carry the request text.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cache_svc.server import CacheApp
from gateway.core.flow import GatewayConfig
from gateway.core.hot import HotConfig
from gateway.server import GatewayApp
from inference_svc.core.engine import EngineConfig
from inference_svc.server import InferenceApp
from reprise import tracing
from devtools.devstack import RedisServer
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost

CHAT_RPC = "/reprise.gateway.v1.Gateway/Chat"
LOOKUP_RPC = "/reprise.cache.v1.Cache/Lookup"
STORE_RPC = "/reprise.cache.v1.Cache/Store"
INFERENCE_STREAM_RPC = "/reprise.inference.v1.Inference/ChatStream"


class Stack:
    def __init__(self, exporter: InMemorySpanExporter, hosts: Sequence[ServiceHost]) -> None:
        self.exporter = exporter
        self.hosts = hosts
        self.gateway = hosts[-1]


@pytest.fixture(scope="module")
async def traced(
    redis_server: RedisServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The three services built while tracing into memory (their interceptors are installed at build)."""
    exporter = tracing.install_in_memory()
    hosts: list[ServiceHost] = []
    try:
        inference = ServiceHost(
            InferenceApp(
                EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("model-cache"), max_new_tokens=8)
            ),
            ServerOptions(port=0),
        )
        await inference.start()
        hosts.append(inference)
        cache = ServiceHost(CacheApp(redis_server.url), ServerOptions(port=0))
        await cache.start()
        hosts.append(cache)
        # No hot layer: a hit goes to the cache service, whose tier spans the test wants to see.
        config = GatewayConfig(cache_timeout_s=2.0, hot=HotConfig(max_entries=0))
        gateway = ServiceHost(GatewayApp(cache.address, inference.address, config), ServerOptions(port=0))
        await gateway.start()
        hosts.append(gateway)
        yield Stack(exporter, hosts)
    finally:
        for host in reversed(hosts):
            await host.stop(0)
        tracing.uninstall()


def _traceparent() -> tuple[str, tuple[tuple[str, str], ...]]:
    """A caller's trace context: the gateway continues the caller's trace."""
    trace_id = secrets.token_hex(16)
    return trace_id, (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)


def _in_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    tid = int(trace_id, 16)
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == tid]


async def _wait_for(exporter: InMemorySpanExporter, trace_id: str, name: str) -> list[ReadableSpan]:
    for _ in range(100):
        spans = _in_trace(exporter, trace_id)
        if any(s.name == name for s in spans):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name} span in trace {trace_id}: {sorted(s.name for s in _in_trace(exporter, trace_id))}")


def _one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, f"{name} ({kind}): {len(found)} spans in {sorted(s.name for s in spans)}"
    return found[0]


def _ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    by_id = {s.context.span_id: s for s in spans}
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def _no_text(spans: list[ReadableSpan], text: str) -> None:
    for s in spans:
        for key, value in (s.attributes or {}).items():
            assert text not in str(value), f"{s.name}.{key} carries the request text"


async def test_a_miss_is_one_trace_from_gateway_to_decode_and_the_write_back_is_linked(traced: Stack, channel_to) -> None:
    text = f"Trace this question about otters {secrets.token_hex(4)}"
    trace_id, metadata = _traceparent()
    stub = pb_grpc.GatewayStub(channel_to(traced.gateway))
    reply = await stub.Chat(pb.ChatRequest(text=text), metadata=metadata)
    assert reply.cache.status == pb.CACHE_STATUS_MISS

    spans = await _wait_for(traced.exporter, trace_id, STORE_RPC)
    request = _one(spans, CHAT_RPC, SpanKind.SERVER)
    assert request.attributes[tracing.NAMESPACE] == "public"
    assert request.attributes[f"{tracing.CACHE_STATUS}.chat"] == "miss"

    lookup = _one(spans, "gateway.cache_lookup")
    assert lookup.attributes[tracing.CACHE_STATUS] == "miss"
    assert lookup.parent.span_id == request.context.span_id
    exact = _one(spans, "cache.exact")
    assert exact.attributes[tracing.CACHE_TIER] == "miss" and exact.attributes[tracing.NAMESPACE] == "public"
    assert _ancestors(exact, spans)[:3] == [LOOKUP_RPC, "gateway.cache_lookup", CHAT_RPC]

    queue, prefill, decode = (_one(spans, n) for n in ("inference.queue", "inference.prefill", "inference.decode"))
    for phase in (queue, prefill, decode):
        assert _ancestors(phase, spans) == [INFERENCE_STREAM_RPC, "gateway.inference", CHAT_RPC]
    assert queue.end_time <= prefill.start_time and prefill.end_time <= decode.start_time
    assert prefill.attributes[tracing.PROMPT_TOKENS] > 0
    assert decode.attributes[tracing.COMPLETION_TOKENS] == reply.usage.completion_tokens

    write = _one(spans, "gateway.cache_write_back")
    assert [link.context.span_id for link in write.links] == [request.context.span_id]
    store = _one(spans, STORE_RPC, SpanKind.SERVER)
    assert "gateway.cache_write_back" in _ancestors(store, spans)
    _no_text(spans, text)


async def test_a_hit_is_one_trace_without_an_inference_span(traced: Stack, channel_to) -> None:
    text = f"Trace the cached answer about owls {secrets.token_hex(4)}"
    stub = pb_grpc.GatewayStub(channel_to(traced.gateway))
    await stub.Chat(pb.ChatRequest(text=text))
    for _ in range(50):  # the write-back is asynchronous
        trace_id, metadata = _traceparent()
        hit = await stub.Chat(pb.ChatRequest(text=text), metadata=metadata)
        if hit.cache.status == pb.CACHE_STATUS_EXACT:
            break
        await asyncio.sleep(0.05)
    assert hit.cache.status == pb.CACHE_STATUS_EXACT

    spans = await _wait_for(traced.exporter, trace_id, CHAT_RPC)
    request = _one(spans, CHAT_RPC, SpanKind.SERVER)
    assert request.attributes[f"{tracing.CACHE_STATUS}.chat"] == "exact"
    lookup = _one(spans, "gateway.cache_lookup")
    assert lookup.attributes[tracing.CACHE_STATUS] == "exact" and lookup.attributes[tracing.SIMILARITY] == 1.0
    exact = _one(spans, "cache.exact")
    assert exact.attributes[tracing.CACHE_TIER] == "exact"
    assert _one(spans, LOOKUP_RPC, SpanKind.SERVER).attributes[tracing.CACHE_TIER] == "exact"
    names = {s.name for s in spans}
    assert not {n for n in names if "inference" in n.lower()}, names
    assert "gateway.cache_write_back" not in names
    _no_text(spans, text)


async def test_a_refused_request_is_a_failed_span_with_its_status(traced: Stack, channel_to) -> None:
    trace_id, metadata = _traceparent()
    stub = pb_grpc.GatewayStub(channel_to(traced.gateway))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Classify(pb.ClassifyRequest(text="   "), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = await _wait_for(traced.exporter, trace_id, "/reprise.gateway.v1.Gateway/Classify")
    request = _one(spans, "/reprise.gateway.v1.Gateway/Classify", SpanKind.SERVER)
    assert request.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert request.status.status_code.name == "ERROR" and request.status.description == "INVALID_ARGUMENT"


async def test_a_joined_request_links_to_the_model_call_it_joined(traced: Stack, channel_to) -> None:
    text = f"Two people ask about badgers at once {secrets.token_hex(4)}"
    stub = pb_grpc.GatewayStub(channel_to(traced.gateway))
    (first_id, first_md), (second_id, second_md) = _traceparent(), _traceparent()
    replies = await asyncio.gather(
        stub.Chat(pb.ChatRequest(text=text), metadata=first_md), stub.Chat(pb.ChatRequest(text=text), metadata=second_md)
    )
    coalesced = [r.cache.coalesced for r in replies]
    assert sorted(coalesced) == [False, True], coalesced  # one model call, the other request joined it
    leader_id, joiner_id = (first_id, second_id) if not coalesced[0] else (second_id, first_id)
    leader = await _wait_for(traced.exporter, leader_id, "gateway.inference")
    joiner = await _wait_for(traced.exporter, joiner_id, "gateway.singleflight_join")
    call = _one(leader, "gateway.inference")
    join = _one(joiner, "gateway.singleflight_join")
    assert [link.context.span_id for link in join.links] == [call.context.span_id]
    assert not {s.name for s in joiner} & {"gateway.inference", "inference.decode"}
