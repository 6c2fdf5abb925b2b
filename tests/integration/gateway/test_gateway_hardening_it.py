"""What a caller gets over gRPC for the probes of issue 24 (items 5 and 6) on the real services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gateway_support import start_gateway_host, unique

from gateway.auth import TokenTable
from gateway.core.flow import GatewayConfig
from gateway.server import GatewayApp
from reprise.common.v1 import common_pb2
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.inference.v1 import inference_pb2 as ipb
from reprise.inference.v1 import inference_pb2_grpc as ipb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost

TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
INVISIBLE = "\u200b\u00a0\u3000"  # zero-width space, no-break space, ideographic space


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def gateway(cache_host, inference_host) -> AsyncIterator[ServiceHost]:  # type: ignore[no-untyped-def]
    host = await start_gateway_host(cache_host.address, inference_host.address)
    yield host
    await host.stop(0)


async def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def test_invisible_only_text_is_invalid_argument_at_the_gateway_and_at_inference(
    gateway: ServiceHost, inference_host: ServiceHost, channel_to
) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(gateway))
    for call in (
        stub.Classify(pb.ClassifyRequest(text=INVISIBLE)),
        stub.Chat(pb.ChatRequest(text=INVISIBLE)),
        stub.Analyze(pb.AnalyzeRequest(text=INVISIBLE)),
    ):
        code, details = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("text: has no visible characters")
    inference = ipb_grpc.InferenceStub(channel_to(inference_host))
    code, details = await _code(inference.Classify(ipb.ClassifyRequest(text=INVISIBLE)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("text: ")


async def test_history_must_alternate_through_the_new_text(gateway: ServiceHost, inference_host: ServiceHost, channel_to) -> None:  # type: ignore[no-untyped-def]
    user = common_pb2.Turn(role=common_pb2.ROLE_USER, content="first question")
    code, details = await _code(pb_grpc.GatewayStub(channel_to(gateway)).Chat(pb.ChatRequest(text="second question", history=[user])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("history: ends with a user turn")
    inference = ipb_grpc.InferenceStub(channel_to(inference_host))
    code, details = await _code(inference.Chat(ipb.ChatRequest(text="second question", history=[user])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("history: ends with a user turn")


async def test_stats_show_the_callers_tenant_and_totals_only_to_an_operator(cache_host, inference_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    app = GatewayApp(
        cache_host.address, inference_host.address, GatewayConfig(cache_timeout_s=2.0),
        tokens=TokenTable([(TOKEN_A, "team-a"), (TOKEN_B, "team-b")]), operator_tokens=[OPERATOR],
    )
    host = ServiceHost(app, ServerOptions(port=0))
    await host.start()
    try:
        stub = pb_grpc.GatewayStub(channel_to(host))
        host.app.gateway.requests.rejected_by["team-a"] = 3  # type: ignore[attr-defined]  # as if A had been refused
        host.app.gateway.requests.rejected += 3  # type: ignore[attr-defined]
        await stub.Classify(pb.ClassifyRequest(text=unique("a fine day")), metadata=bearer(TOKEN_A))
        a = await stub.Stats(pb.StatsRequest(), metadata=bearer(TOKEN_A))
        b = await stub.Stats(pb.StatsRequest(), metadata=bearer(TOKEN_B))
        everyone = await stub.Stats(pb.StatsRequest(), metadata=bearer(OPERATOR))
        assert (a.tenant, a.counters.requests, a.rejected_overload) == ("team-a", 1, 3)
        assert (b.tenant, b.counters.requests, b.rejected_overload, b.hot_entries) == ("team-b", 0, 0, 0)
        assert (everyone.tenant, everyone.counters.requests, everyone.rejected_overload) == ("*", 1, 3)
        assert everyone.hot_entries >= a.hot_entries
    finally:
        await host.stop(0)
