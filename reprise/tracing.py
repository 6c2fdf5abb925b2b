"""OpenTelemetry tracing: off by default, switched on by the standard ``OTEL_*`` variables.

One trace per request: the gateway's server span (from the gRPC instrumentation)
is the root, the client spans it opens towards the cache and inference carry
the ``traceparent`` header, and each service adds the spans only it can time
(cache tiers, inference queue/prefill/decode). The asynchronous write-back
outlives the request: it stays in the request's trace (one trace id finds the
Store call too) and carries a *link* to the request span, OpenTelemetry's way
of saying "caused by, not part of" (the response did not wait for it).

Off (the default), nothing is installed: no interceptor on servers or channels,
and :func:`span` returns a shared no-op context, so the request path pays one
function call per span site. :func:`setup` is what ``main()`` calls;
:func:`install_in_memory` is the hook tests use to read spans back.

Span attributes never carry request or reply text: only cache status,
similarity, tokens, the task and the tenant's namespace.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

log = logging.getLogger(__name__)

# Attribute names, one spelling for every service.
NAMESPACE = "reprise.namespace"
TASK = "reprise.task"
CACHE_STATUS = "reprise.cache.status"
CACHE_TIER = "reprise.cache.tier"
CACHE_HOT = "reprise.cache.hot"
#: Why the cache was bypassed (a fixed phrase, never request text).
CACHE_REASON = "reprise.cache.reason"
SIMILARITY = "reprise.cache.similarity"
COALESCED = "reprise.coalesced"
PROMPT_TOKENS = "reprise.tokens.prompt"
CACHED_TOKENS = "reprise.tokens.cached"
COMPLETION_TOKENS = "reprise.tokens.completion"
BATCH_SIZE = "reprise.batch_size"

_EXPORTERS = ("otlp", "console")

SpanContext = trace.SpanContext


def _true(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TracingConfig:
    """What the ``OTEL_*`` environment asks for (read in ``main()``, see :meth:`from_env`)."""

    exporters: tuple[str, ...] = ()
    service_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @classmethod
    def from_env(cls, env: Mapping[str, str], service: str) -> TracingConfig:
        """Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``)
        or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, exporter ``otlp``);
        ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keeps it off.

        Unlike the SDK's own default (``otlp``), an unset environment means off: a
        service must not start sending spans to a collector nobody configured.
        """
        name = env.get("OTEL_SERVICE_NAME") or f"reprise-{service}"
        if _true(env.get("OTEL_SDK_DISABLED")):
            return cls((), name)
        raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if not raw:
            endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            return cls(("otlp",) if endpoint else (), name)
        exporters = tuple(e.strip() for e in raw.split(",") if e.strip() and e.strip() != "none")
        unknown = [e for e in exporters if e not in _EXPORTERS]
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)} (use {', '.join(_EXPORTERS)} or none)")
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        if "otlp" in exporters and protocol != "grpc":
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only grpc is installed")
        return cls(exporters, name)


# The active provider and tracer; None while tracing is off.
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_NOOP = contextlib.nullcontext(trace.INVALID_SPAN)


def enabled() -> bool:
    return _tracer is not None


def install(provider: TracerProvider) -> None:
    """Trace through ``provider`` from now on. Servers and channels built afterwards are instrumented."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("reprise")


def uninstall() -> None:
    """Back to off (tests). Servers and channels already built keep their interceptors."""
    global _provider, _tracer
    _provider = None
    _tracer = None


def setup(service: str, env: Mapping[str, str]) -> TracerProvider | None:
    """Install tracing as ``env`` says (see :meth:`TracingConfig.from_env`); None when off.

    Called once from ``main()``, before channels are built. The SDK reads the
    rest of the standard variables itself: ``OTEL_TRACES_SAMPLER[_ARG]``,
    ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, certificates), ``OTEL_BSP_*``
    and ``OTEL_RESOURCE_ATTRIBUTES``. Spans are exported in batches from a
    background thread and flushed at exit.
    """
    try:
        config = TracingConfig.from_env(env, service)
    except ValueError as exc:  # a startup mistake: say which variable, do not serve untraced
        raise SystemExit(f"tracing: {exc}") from None
    if not config.enabled:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: config.service_name}))
    for name in config.exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    # Global too, so any library that traces through the API joins the same traces.
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on: service %s, exporters %s", config.service_name, ",".join(config.exporters))
    return provider


def install_in_memory(service: str = "reprise-test") -> InMemorySpanExporter:
    """Trace into memory, exported synchronously as each span ends (the test hook)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    return exporter


# -- gRPC interceptors (grpc is imported only when tracing is on) ---------------------------


def _rpc_filter() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    # Probes and reflection would drown the traces; the invalidation stream lives for
    # the whole process and is no request.
    return filters.negate(
        filters.any_of(
            filters.service_prefix("grpc.health."),
            filters.service_prefix("grpc.reflection."),
            filters.method_name("WatchInvalidations"),
        )
    )


def server_interceptors() -> list[Any]:
    """The gRPC server instrumentation (extracts ``traceparent``), or nothing when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider, filter_=_rpc_filter())]


def client_interceptors() -> list[Any]:
    """The gRPC client instrumentation (injects ``traceparent``), or nothing when off.

    Unary calls use the OpenTelemetry instrumentation as it is. Its streaming
    interceptor ends the span only when the response iterator is exhausted or
    garbage-collected, and the gateway stops reading a reply at its finish chunk
    (then cancels the call), so that span would end at some later collection.
    :class:`_StreamSpan` ends it when the call itself ends, done or cancelled.
    """
    if _provider is None or _tracer is None:
        return []
    import grpc
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    rpc_filter = _rpc_filter()
    unary = [
        i
        for i in aio_client_interceptors(tracer_provider=_provider, filter_=rpc_filter)
        if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)
    ]
    return [*unary, _stream_span_interceptor(_tracer, rpc_filter)]


def _stream_span_interceptor(tracer: trace.Tracer, rpc_filter: Any) -> Any:
    import grpc
    from opentelemetry import propagate

    class _StreamSpan(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
        """A client span per server-streaming call, ended by the call's own done callback."""

        async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            if not rpc_filter(details):
                return await continuation(details, request)
            method = details.method.decode() if isinstance(details.method, bytes) else details.method
            service, _, name = method.lstrip("/").partition("/")
            span = tracer.start_span(
                method,
                kind=trace.SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), *carrier.items())
            details = grpc.aio.ClientCallDetails(
                details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
            )
            try:
                call = await continuation(details, request)
            except Exception as exc:
                end(span, exc)
                raise
            call.add_done_callback(lambda c: _end_stream_span(span, c))
            return call

    return _StreamSpan()


def _end_stream_span(s: trace.Span, call: Any) -> None:
    import asyncio

    ended = time.time_ns()

    async def finish() -> None:  # the status is a coroutine on aio calls; it is ready by now
        code = await call.code()
        s.set_attribute("rpc.grpc.status_code", code.value[0])
        if code.name not in ("OK", "CANCELLED"):  # CANCELLED: we stopped reading a complete reply
            s.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
        s.end(end_time=ended)

    asyncio.ensure_future(finish())


# -- spans -----------------------------------------------------------------------------------


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[trace.Span]:
    """A child of the current span, current inside the ``with`` block (a no-op when off)."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def start(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    links: Sequence[trace.SpanContext] = (),
    parent: trace.SpanContext | None = None,
) -> trace.Span:
    """A span the caller ends (work that outlives the block: a model call, a write-back).

    Its parent is the current span, or ``parent`` when given; ``links`` point at
    spans it follows from without being part of them.
    """
    if _tracer is None:
        return trace.INVALID_SPAN
    return _tracer.start_span(
        name,
        context=trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None,
        attributes=attributes,
        links=[trace.Link(c) for c in links if c.is_valid],
    )


def use(s: trace.Span) -> contextlib.AbstractContextManager[trace.Span]:
    """Make ``s`` current inside the block without ending it (tasks created there inherit it)."""
    if _tracer is None:
        return _NOOP
    return trace.use_span(s, end_on_exit=False)


def record(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any] | None = None,
    parent: trace.Span | None = None,
) -> trace.Span:
    """A finished span timed by the caller (stages measured elsewhere), below ``parent`` or the current span."""
    if _tracer is None:
        return trace.INVALID_SPAN
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    s = _tracer.start_span(name, context=ctx, attributes=attributes, start_time=start_ns)
    s.end(end_time=max(start_ns, end_ns))
    return s


def end(s: trace.Span, error: BaseException | None = None) -> None:
    """End ``s``, marked failed when ``error`` is given (its type only: messages may quote input)."""
    if error is not None and s.is_recording():
        s.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
    s.end()


def current() -> trace.SpanContext:
    """The current span's context (invalid when off or outside a span)."""
    return trace.get_current_span().get_span_context()


def annotate(attributes: Mapping[str, Any]) -> None:
    """Set attributes on the current span (the request's, inside a handler)."""
    if _tracer is None:
        return
    s = trace.get_current_span()
    if s.is_recording():
        s.set_attributes(attributes)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None when off or outside a trace."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None

