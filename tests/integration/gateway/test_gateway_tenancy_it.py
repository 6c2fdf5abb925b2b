"""Tenancy, auth on/off, TLS/mTLS on every hop, and a password-protected Redis behind the cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from gateway_support import eventually, start_exact_cache, start_gateway_host, unique

from gateway.auth import TokenFile, TokenTable
from inference_svc.core.engine import EngineConfig
from inference_svc.server import InferenceApp
from devtools.devstack import RedisServer
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost
from tests.support.certs import Certs, make_certs
from reprise.rpc.tls import ClientTLS, ServerTLS

TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"
MISS, EXACT = pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_EXACT


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def authed_gateway(cache_host, inference_host) -> AsyncIterator[ServiceHost]:  # type: ignore[no-untyped-def]
    host = await start_gateway_host(
        cache_host.address, inference_host.address, tokens=TokenTable([(TOKEN_A, "team-a"), (TOKEN_B, "team-b")])
    )
    yield host
    await host.stop(0)


async def test_auth_on_rejects_missing_and_unknown_tokens(authed_gateway, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(authed_gateway))
    cases = [((), "missing"), (bearer("not-a-real-token-0123456789"), "unknown token"), ((("authorization", TOKEN_A),), "Bearer")]
    for metadata, why in cases:
        for call in (stub.Classify(pb.ClassifyRequest(text="hi"), metadata=metadata), stub.Stats(pb.StatsRequest(), metadata=metadata)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert why in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in stub.ChatStream(pb.ChatStreamRequest(text="hi"))]
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = await stub.Classify(pb.ClassifyRequest(text=unique("hello")), metadata=bearer(TOKEN_A))
    assert ok.result.label in (1, 2)


async def test_tokens_file_rotates_without_a_restart(cache_host, inference_host, channel_to, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_A} team-a\n")
    source = TokenFile(path)
    host = await start_gateway_host(
        cache_host.address, inference_host.address, tokens=source.load(), token_file=source, tokens_reload_s=0.05
    )
    try:
        stub = pb_grpc.GatewayStub(channel_to(host))
        assert (await stub.Stats(pb.StatsRequest(), metadata=bearer(TOKEN_A))).tenant == "team-a"

        async def tenant_of(token: str) -> str:
            try:
                return (await stub.Stats(pb.StatsRequest(), metadata=bearer(token))).tenant
            except grpc.aio.AioRpcError as err:
                return err.code().name

        rotated = tmp_path / "tokens.next"
        rotated.write_text(f"{TOKEN_B} team-b\n")
        rotated.replace(path)
        await eventually(lambda: tenant_of(TOKEN_B), lambda t: t == "team-b")
        assert await tenant_of(TOKEN_A) == "UNAUTHENTICATED"
        # A broken file keeps the tokens in force; an emptied one refuses everyone (auth stays on).
        path.write_text("not a valid line at all\n")
        await asyncio.sleep(0.3)
        assert await tenant_of(TOKEN_B) == "team-b"
        path.write_text("# nobody\n")
        await eventually(lambda: tenant_of(TOKEN_B), lambda t: t == "UNAUTHENTICATED")
        assert await tenant_of("") == "UNAUTHENTICATED"
    finally:
        await host.stop(0)


async def test_auth_off_means_tenant_public(gateway_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    # No token needed, and a token sent anyway is ignored rather than rejected.
    assert (await stub.Stats(pb.StatsRequest())).tenant == "public"
    assert (await stub.Stats(pb.StatsRequest(), metadata=bearer(TOKEN_A))).tenant == "public"


async def test_tenants_are_isolated(authed_gateway, cache_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(authed_gateway))
    text = unique("the same question from two teams")
    first = await stub.Chat(pb.ChatRequest(text=text), metadata=bearer(TOKEN_A))
    assert first.cache.status == MISS
    await eventually(lambda: stub.Chat(pb.ChatRequest(text=text), metadata=bearer(TOKEN_A)), lambda r: r.cache.status == EXACT)
    other = await stub.Chat(pb.ChatRequest(text=text, cache=pb.CachePolicy(no_store=True)), metadata=bearer(TOKEN_B))
    assert other.cache.status == MISS and other.cache.key != first.cache.key
    # Semantic lookups are namespaced too: a near-identical text from B never sees A's entry.
    near = await stub.Chat(
        pb.ChatRequest(text=text + " please", cache=pb.CachePolicy(min_similarity=0.0, no_store=True)),
        metadata=bearer(TOKEN_B),
    )
    assert near.cache.matched_text != text
    a = await stub.Stats(pb.StatsRequest(), metadata=bearer(TOKEN_A))
    b = await stub.Stats(pb.StatsRequest(), metadata=bearer(TOKEN_B))
    assert (a.tenant, b.tenant) == ("team-a", "team-b")
    assert a.counters.exact_hits >= 1 and b.counters.exact_hits == 0


async def test_tls_and_mtls_on_every_hop(redis_server, tiny_model_dir, tmp_path: Path, channel_to) -> None:  # type: ignore[no-untyped-def]
    certs: Certs = make_certs(tmp_path)
    mtls = ServerTLS(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca)
    to_backend = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    inference = ServiceHost(
        InferenceApp(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path / "models", max_new_tokens=8)),
        ServerOptions(port=0, tls=mtls),
    )
    await inference.start()
    cache = await start_exact_cache(redis_server.url, tls=mtls)
    gateway = await start_gateway_host(
        cache.address, inference.address, tls=mtls, cache_tls=to_backend, inference_tls=to_backend
    )
    try:
        creds = grpc.ssl_channel_credentials(
            Path(certs.ca).read_bytes(), Path(certs.client_key).read_bytes(), Path(certs.client_cert).read_bytes()
        )
        async with grpc.aio.secure_channel(gateway.address, creds) as channel:
            stub = pb_grpc.GatewayStub(channel)
            text = unique("secure hello")
            assert (await stub.Classify(pb.ClassifyRequest(text=text))).cache.status == MISS
            await eventually(lambda: stub.Classify(pb.ClassifyRequest(text=text)), lambda r: r.cache.status == EXACT)
        # No client certificate: the handshake is refused.
        no_cert = grpc.ssl_channel_credentials(Path(certs.ca).read_bytes())
        async with grpc.aio.secure_channel(gateway.address, no_cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.GatewayStub(channel).Classify(pb.ClassifyRequest(text="hi"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext to a TLS port: refused too.
        plain = pb_grpc.GatewayStub(channel_to(gateway))
        with pytest.raises(grpc.aio.AioRpcError):
            await plain.Classify(pb.ClassifyRequest(text="hi"), timeout=5)
    finally:
        await gateway.stop(0)
        await cache.stop(0)
        await inference.stop(0)


async def test_gateway_and_cache_with_password_protected_redis(inference_host, channel_to) -> None:  # type: ignore[no-untyped-def]
    password = "s3cret-redis-password"
    redis = RedisServer(password=password).start()
    cache = await start_exact_cache(redis.url)  # the URL carries the password
    gateway = await start_gateway_host(cache.address, inference_host.address)
    try:
        stub = pb_grpc.GatewayStub(channel_to(gateway))
        text = unique("stored behind AUTH")
        first = await stub.Classify(pb.ClassifyRequest(text=text))
        hit = await eventually(lambda: stub.Classify(pb.ClassifyRequest(text=text)), lambda r: r.cache.status == EXACT)
        assert hit.result == first.result
        # It really is in that Redis, and that Redis really wants the password.
        client = aioredis.Redis(port=redis.port, password=password)
        try:
            assert await client.dbsize() >= 1
        finally:
            await client.aclose()
        reader, writer = await asyncio.open_connection("127.0.0.1", redis.port)
        writer.write(b"PING\r\n")
        assert (await reader.readline()).startswith(b"-NOAUTH")
        writer.close()
    finally:
        await gateway.stop(0)
        await cache.stop(0)
        redis.stop()
