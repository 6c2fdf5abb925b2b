"""Redis Sentinel, Redis Cluster and TLS Redis by URL and flags: the same service code, real servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from cache_svc.core.embedders import USEEmbedder
from cache_svc.server import CacheApp, build_parser, settings_from_args
from reprise.cache.v1 import cache_pb2 as pb
from reprise.cache.v1 import cache_pb2_grpc as pb_grpc
from reprise.common.v1 import common_pb2 as cpb
from devtools.devstack import RedisServer, RedisTLS, free_port
from reprise.rpc.server import ServerOptions, ServiceHost
from tests.support.certs import Certs, make_certs


def _wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def _cluster_port() -> int:
    """A free port <= 55535 whose cluster bus port (+10000) is free too (Redis requires both)."""
    import random

    for _ in range(200):
        port = random.randint(20_000, 55_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@contextlib.contextmanager
def _procs() -> Iterator[tuple[list[subprocess.Popen], Path]]:
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="reprise-redis-topo-"))
    try:
        yield procs, tmp
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def sentinel_url() -> Iterator[str]:
    master = RedisServer().start()
    with _procs() as (procs, tmp):
        port = free_port()
        conf = tmp / "sentinel.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
        procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL))
        _wait_port(port)
        yield f"redis+sentinel://127.0.0.1:{port}/mymaster"
    master.stop()


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with _procs() as (procs, tmp):
        ports = [_cluster_port() for _ in range(3)]
        for p in ports:
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(tmp / f"nodes-{p}.conf"), "--save", "", "--appendonly", "no",
                 "--dir", str(tmp)], stdout=subprocess.DEVNULL))
        for p in ports:
            _wait_port(p)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while b"cluster_state:ok" not in subprocess.run(
            ["redis-cli", "-p", str(ports[0]), "cluster", "info"], capture_output=True).stdout:
            if time.monotonic() > deadline:
                raise TimeoutError("cluster did not become ok")
            time.sleep(0.2)
        yield f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"


@pytest.fixture(scope="module")
def embedder() -> USEEmbedder:
    return USEEmbedder()


@contextlib.asynccontextmanager
async def _replica(redis: str | list[str], prefix: str, embedder: USEEmbedder) -> AsyncIterator[pb_grpc.CacheStub]:
    """A cache replica on ``redis``: a URL, or the sidecar's command-line flags (parsed as ``python -m cache_svc``)."""
    if isinstance(redis, str):
        app = CacheApp(redis, key_prefix=prefix, embedder=embedder)
    else:
        settings = settings_from_args(build_parser().parse_args([*redis, "--key-prefix", prefix]))
        app = CacheApp(settings=settings, embedder=embedder)
    host = ServiceHost(app, ServerOptions(port=0))
    await asyncio.wait_for(host.start(), 20)
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            yield pb_grpc.CacheStub(channel)
    finally:
        await host.stop(0)


def _q(text: str, ns: str) -> pb.CacheQuery:
    return pb.CacheQuery(namespace=ns, task="chat", text=text, model_id="m", model_revision="r")


async def _exercise(url: str | list[str], embedder: USEEmbedder) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    async with _replica(url, prefix, embedder) as a, _replica(url, prefix, embedder) as b:
        stored = await a.Store(pb.StoreRequest(query=_q("How do I reset my password?", "n1"), answer=cpb.Answer(reply="x")))
        await a.Store(pb.StoreRequest(query=_q("Why is the sky blue?", "n2"), answer=cpb.Answer(reply="y")))
        assert (await b.Lookup(pb.LookupRequest(query=_q("how do i reset my password", "n1")))).tier == pb.TIER_EXACT
        deadline = time.monotonic() + 1.0
        while (await b.Lookup(pb.LookupRequest(query=_q("How can I reset my password?", "n1")))).tier != pb.TIER_SEMANTIC:
            assert time.monotonic() < deadline, "replica b did not index a's entry within 1 s"
            await asyncio.sleep(0.02)
        assert (await b.Invalidate(pb.InvalidateRequest(key=stored.key))).removed == 1
        assert (await b.Invalidate(pb.InvalidateRequest(namespace="n2"))).removed == 1
        assert (await a.Stats(pb.StatsRequest())).entries == 0


async def test_sentinel_url(sentinel_url: str, embedder: USEEmbedder) -> None:
    await _exercise(sentinel_url, embedder)


async def test_cluster_url(cluster_url: str, embedder: USEEmbedder) -> None:
    await _exercise(cluster_url, embedder)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certs) -> Iterator[RedisServer]:
    """A redis-server that speaks TLS only and requires a client certificate (mutual TLS)."""
    server = RedisServer(tls=RedisTLS(certs.server_cert, certs.server_key, certs.ca)).start()
    yield server
    server.stop()


def _tls_flags(server: RedisServer, certs: Certs) -> list[str]:
    return ["--redis-url", server.url, "--redis-tls-ca", certs.ca,
            "--redis-tls-cert", certs.client_cert, "--redis-tls-key", certs.client_key]


async def test_tls_with_client_certificates_by_flags(tls_redis: RedisServer, certs: Certs, embedder: USEEmbedder) -> None:
    """Two replicas on a mutual-TLS Redis, configured as users type it: stores, exact and semantic hits
    across replicas (the index follows Redis' pub/sub over TLS) and invalidation."""
    assert tls_redis.url.startswith("rediss://localhost:")
    await _exercise(_tls_flags(tls_redis, certs), embedder)


async def _never_serving(flags: list[str], embedder: USEEmbedder, caplog: pytest.LogCaptureFixture) -> str:
    """Start a replica with ``flags``; assert it stays NOT_SERVING (calls UNAVAILABLE); return what it logged."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    app = CacheApp(settings=settings_from_args(build_parser().parse_args(flags)), embedder=embedder)
    host = ServiceHost(app, ServerOptions(port=0))
    await host.bind()
    starting = asyncio.create_task(host.start())
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            await asyncio.sleep(1.0)
            assert not starting.done(), "the replica should keep waiting for Redis, not exit"
            status = (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.CacheStub(channel).Lookup(pb.LookupRequest(query=_q("x", "n")))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await host.stop(0)
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cache_svc"))


async def test_tls_refuses_a_redis_certificate_from_another_ca(
    tls_redis: RedisServer, certs: Certs, embedder: USEEmbedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_certs(tmp_path)  # a CA that did not sign the server's certificate
    flags = _tls_flags(tls_redis, certs)
    flags[flags.index("--redis-tls-ca") + 1] = other.ca
    logged = await _never_serving(flags, embedder, caplog)
    assert "certificate verify failed" in logged, logged


async def test_tls_without_a_client_certificate_is_refused_by_redis(
    tls_redis: RedisServer, certs: Certs, embedder: USEEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    logged = await _never_serving(["--redis-url", tls_redis.url, "--redis-tls-ca", certs.ca], embedder, caplog)
    assert "pass --redis-tls-cert and --redis-tls-key" in logged, logged  # the reset or the TLS alert, and the hint


async def test_a_plain_url_on_a_tls_port_is_told_to_use_rediss(
    tls_redis: RedisServer, embedder: USEEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    plain = tls_redis.url.replace("rediss://", "redis://", 1)
    logged = await _never_serving(["--redis-url", plain], embedder, caplog)
    assert "use a rediss:// URL" in logged, logged
