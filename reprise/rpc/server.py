"""The composition-root helper every service's ``server.py`` uses.

A :class:`ServiceHost` binds a ``grpc.aio`` server with health and reflection,
reports NOT_SERVING until the application says it is ready (model loaded and
warmed, Redis answering), lets an application that watches a dependency move
its own services' status while the overall one ("") stays SERVING (the cache
sidecar while Redis is down), and shuts down gracefully: health goes NOT_SERVING,
in-flight calls get ``grace_s`` to finish, then the application closes what it
opened. :func:`run_until_signal` is what ``main()`` calls; tests use
:class:`ServiceHost` directly on ``127.0.0.1:0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from reprise import tracing
from reprise.rpc.interceptors import ServiceInterceptor
from reprise.rpc.metrics import SERVING, serve_metrics
from reprise.rpc.tls import ServerTLS

log = logging.getLogger(__name__)


class Application(Protocol):
    """What a service plugs into the host."""

    #: Short name used in logs and metrics ("inference", "cache", "gateway").
    name: str
    #: Fully qualified proto service names, for health and reflection.
    service_names: Sequence[str]

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers to ``server``."""

    async def start(self) -> None:
        """Become ready to serve (load, warm up, connect). Called after the port is bound."""

    async def close(self) -> None:
        """Release what ``start`` acquired. Called after in-flight calls finished."""


#: ``await report(ready)`` sets the health of the application's own services (not the server's overall "").
Report = Callable[[bool], Awaitable[None]]


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    #: Seconds in-flight calls get to finish on shutdown.
    grace_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    #: Calls beyond this many in flight get RESOURCE_EXHAUSTED from gRPC itself (None: no limit).
    max_concurrent_rpcs: int | None = None
    tls: ServerTLS | None = None
    #: Prometheus /metrics port; 0 disables.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"


class ServiceHost:
    """One running gRPC server for one application."""

    def __init__(self, app: Application, options: ServerOptions) -> None:
        self.app = app
        self.options = options
        self.port: int | None = None
        self._health = health_aio.HealthServicer()
        self._server = grpc.aio.server(
            # Tracing outermost (when on): the request span is current in our interceptor,
            # whose request id then is the trace id.
            interceptors=[*tracing.server_interceptors(), ServiceInterceptor(app.name)],
            options=[
                ("grpc.max_send_message_length", options.max_message_bytes),
                ("grpc.max_receive_message_length", options.max_message_bytes),
                # Accept client keepalive pings of the channels in reprise.rpc.channel.
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        )
        app.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*app.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self._started = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    async def _set_status(self, status: int) -> None:
        for name in ("", *self.app.service_names):
            await self._health.set(name, status)
        SERVING.labels(self.app.name).set(status == health_pb2.HealthCheckResponse.SERVING)

    async def bind(self) -> int:
        """Listen (health NOT_SERVING) and return the bound port."""
        await self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.options.host}:{self.options.port}"
        if self.options.tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self.options.tls.credentials())
        if not self.port:
            raise OSError(f"cannot bind {address}")
        await self._server.start()
        serve_metrics(self.options.metrics_port, self.options.metrics_host)
        return self.port

    async def start(self) -> int:
        """Bind, make the application ready, then report SERVING. Returns the port."""
        port = self.port or await self.bind()
        await self.app.start()
        self._started = True
        await self._set_status(health_pb2.HealthCheckResponse.SERVING)
        # Optional app hook: watch(report) runs while serving and reports a dependency's state.
        watch = getattr(self.app, "watch", None)
        if callable(watch):
            self._watch = asyncio.create_task(watch(self._report), name=f"{self.app.name}-health")
            self._watch.add_done_callback(self._watch_ended)
        log.info("%s serving on %s:%d", self.app.name, self.options.host, port)
        return port

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so instead of freezing health
            log.error("%s: health watch failed", self.app.name, exc_info=task.exception())

    async def _report(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.app.service_names:  # ignored once draining (enter_graceful_shutdown)
            await self._health.set(name, status)
        SERVING.labels(self.app.name).set(ready)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, let in-flight calls finish, then close the application."""
        grace = self.options.grace_s if grace_s is None else grace_s
        await self._health.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
            self._watch = None
        SERVING.labels(self.app.name).set(0)  # after the watch stopped: it cannot report ready again
        # Optional app hook: end long-lived streams (e.g. cache WatchInvalidations) so they
        # do not hold the server for the whole grace period.
        drain = getattr(self.app, "drain", None)
        if callable(drain):
            drain()
        await self._server.stop(grace)
        if self._started:
            await self.app.close()
            self._started = False
        log.info("%s stopped", self.app.name)


async def run_until_signal(app: Application, options: ServerOptions) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. What every ``main()`` runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = ServiceHost(app, options)
    await host.bind()
    log.info("%s listening on %s:%d (not serving until ready)", app.name, options.host, host.port)
    starting = asyncio.ensure_future(host.start())
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        if starting.exception() is not None:
            # Stop the bound server before raising: left to the garbage collector, grpc's Server.__del__
            # runs after asyncio.run closed the loop and prints a traceback under the one-line error.
            with contextlib.suppress(Exception):
                await host.stop(0)
        starting.result()  # a failed start is fatal: raise it
        await stopping
    else:
        log.info("%s: signal while starting, shutting down", app.name)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
    log.info("%s: shutting down (grace %.1fs)", app.name, options.grace_s)
    await host.stop()
