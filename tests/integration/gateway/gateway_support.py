"""Helpers for the gateway's integration tests: hosts with options, certificates, metric reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import REGISTRY

from cache_svc.server import CacheApp, CacheSettings, SemanticOptions
from gateway.auth import TokenFile, TokenTable
from gateway.core.flow import GatewayConfig
from gateway.server import GatewayApp
from reprise.rpc.server import ServerOptions, ServiceHost
from reprise.rpc.tls import ClientTLS, ServerTLS

T = TypeVar("T")


def unique(text: str) -> str:
    """A text no earlier test (or run against the same Redis) has asked."""
    return f"{text} {uuid.uuid4().hex[:8]}"


async def start_gateway_host(
    cache_address: str,
    inference_address: str,
    config: GatewayConfig | None = None,
    *,
    tokens: TokenTable | None = None,
    token_file: TokenFile | None = None,
    tokens_reload_s: float = 10.0,
    tls: ServerTLS | None = None,
    cache_tls: ClientTLS | None = None,
    inference_tls: ClientTLS | None = None,
) -> ServiceHost:
    # A generous cache budget unless a test sets one: a timeout on a busy CI machine would
    # turn the hit a test expects into a miss.
    app = GatewayApp(
        cache_address,
        inference_address,
        config or GatewayConfig(cache_timeout_s=2.0),
        cache_tls=cache_tls,
        inference_tls=inference_tls,
        tokens=tokens,
        token_file=token_file,
        tokens_reload_s=tokens_reload_s,
    )
    host = ServiceHost(app, ServerOptions(port=0, tls=tls))
    await host.start()
    return host


async def start_exact_cache(redis_url: str, port: int = 0, tls: ServerTLS | None = None) -> ServiceHost:
    """A cache service with the exact tier only (no embedder to load: starts in milliseconds)."""
    app = CacheApp(redis_url, settings=CacheSettings(semantic=SemanticOptions(embedder="")))
    host = ServiceHost(app, ServerOptions(port=port, tls=tls))
    await host.start()
    return host


def metric(name: str, **labels: str) -> float:
    """Current value of one Prometheus sample in this process (0 when never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(fn: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """Call ``fn`` until ``ok(result)`` (background write-backs and streams take a moment)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await fn()
        if ok(result):
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition never held; last result: {result}")
        await asyncio.sleep(0.05)


class StallProxy:
    """A TCP forwarder in front of a service that can stall it (a hung peer, like toxiproxy's timeout).

    While paused, bytes are accepted and held, so calls through it hang exactly as
    they would against a stuck model: the gateway's limits and deadlines are what
    end them.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> StallProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        return self

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        for task in (self._pump(reader, up_writer), self._pump(up_reader, writer)):
            t = asyncio.ensure_future(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
