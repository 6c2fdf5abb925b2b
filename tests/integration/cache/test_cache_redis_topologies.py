"""Redis Sentinel and Redis Cluster by URL: the same service code, real servers on loopback."""

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
from cache_svc.server import CacheApp
from reprise.cache.v1 import cache_pb2 as pb
from reprise.cache.v1 import cache_pb2_grpc as pb_grpc
from reprise.common.v1 import common_pb2 as cpb
from reprise.devstack import RedisServer, free_port
from reprise.rpc.server import ServerOptions, ServiceHost


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
async def _replica(url: str, prefix: str, embedder: USEEmbedder) -> AsyncIterator[pb_grpc.CacheStub]:
    host = ServiceHost(CacheApp(url, key_prefix=prefix, embedder=embedder), ServerOptions(port=0))
    await asyncio.wait_for(host.start(), 20)
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            yield pb_grpc.CacheStub(channel)
    finally:
        await host.stop(0)


def _q(text: str, ns: str) -> pb.CacheQuery:
    return pb.CacheQuery(namespace=ns, task="chat", text=text, model_id="m", model_revision="r")


async def _exercise(url: str, embedder: USEEmbedder) -> None:
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
