"""OpenTelemetry tracing: off by default, switched on by the standard ``OTEL_*`` variables.

One trace per request: the gateway's server span (:mod:`reprise.rpc.tracing`)
is the root, its calls to the cache and inference carry the ``traceparent``
header (:func:`propagation`), and each service adds the spans only it can time
(cache tiers, inference queue/prefill/decode). The asynchronous write-back
outlives the request: it stays in the request's trace (one trace id finds the
Store call too) and carries a *link* to the request span, OpenTelemetry's way
of saying "caused by, not part of" (the response did not wait for it).

Off (the default), nothing is installed: no interceptor on servers, no header,
and :func:`span` returns a shared no-op context, so the request path pays one
function call per span site. :func:`setup` is what ``main()`` calls;
:func:`install_in_memory` is the hook tests use to read spans back.

Span attributes never carry request or reply text: only cache status,
similarity, tokens, the task and the tenant's namespace.
"""

from __future__ import annotations

import contextlib
import logging
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
#: Share of new traces sampled when ``OTEL_TRACES_SAMPLER`` is unset (a caller's sampled trace is
#: always continued). A recorded exact hit costs about 200 µs more CPU in Python (span recording,
#: then OTLP encoding on the export thread, which shares the GIL), against ~370 µs for the whole
#: hit, and an unsampled one ~7 µs: sampling 10% cost 15% of exact-hit throughput in one run
#: of make bench-gateway, 1% stays within the 5% budget.
DEFAULT_SAMPLE_RATIO = 0.01

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


def recording() -> bool:
    """Spans started here would be recorded: tracing is on and this request is sampled (or none is current).

    The guard for work done only for a span (building attributes), on the path
    every unsampled request takes.
    """
    return _tracer is not None and not _unsampled()


def install(provider: TracerProvider) -> None:
    """Trace through ``provider`` from now on. Servers and channels built afterwards are instrumented."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("reprise")


def uninstall() -> None:
    """Back to off (tests). Servers already built keep their interceptor."""
    global _provider, _tracer
    _provider = None
    _tracer = None


def setup(service: str, env: Mapping[str, str]) -> TracerProvider | None:
    """Install tracing as ``env`` says (see :meth:`TracingConfig.from_env`); None when off.

    Called once from ``main()`` with ``os.environ``, before channels are built.
    The SDK reads the rest of the standard variables itself:
    ``OTEL_TRACES_SAMPLER[_ARG]`` (unset: :data:`DEFAULT_SAMPLE_RATIO` of new
    traces, parent-based), ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers,
    certificates), ``OTEL_BSP_*`` and ``OTEL_RESOURCE_ATTRIBUTES``. Spans are
    exported in batches from a background thread and flushed at exit.
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
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    # None: the SDK builds the sampler OTEL_TRACES_SAMPLER names.
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else ParentBased(TraceIdRatioBased(DEFAULT_SAMPLE_RATIO))
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: config.service_name}), sampler=sampler)
    for name in config.exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    # Global too, so any library that traces through the API joins the same traces.
    trace.set_tracer_provider(provider)
    install(provider)
    log.info(
        "tracing on: service %s, exporters %s, sampler %s",
        config.service_name, ",".join(config.exporters), provider.sampler.get_description(),
    )
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


# -- across services (grpc is imported only when tracing is on) -----------------------------


def server_interceptors() -> list[Any]:
    """The server span interceptor (continues a caller's ``traceparent``), or nothing when off."""
    if _tracer is None:
        return []
    from reprise.rpc.tracing import ServerSpans

    return [ServerSpans(_tracer)]


def propagation() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the current span to the service called next (W3C ``traceparent``).

    Sent with every call the gateway makes, also for an unsampled request, so the
    callee does not sample it either; empty when tracing is off. The caller's own
    span (``gateway.cache_lookup``, ``gateway.inference``, ``gateway.cache_write_back``)
    stands for the call: no client span is added, and no client interceptor, which
    on grpc.aio costs an extra task per call.
    """
    if _tracer is None:
        return ()
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return ()
    header = (("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"),)
    return header + (("tracestate", ctx.trace_state.to_header()),) if ctx.trace_state else header


# -- spans -----------------------------------------------------------------------------------


def _unsampled() -> bool:
    """Inside a trace that is not sampled: children would not be recorded either, so skip them.

    The sampler would say the same, after generating ids; this is the cheap way to
    the same answer, on the path every unsampled request takes.
    """
    ctx = trace.get_current_span().get_span_context()
    return ctx.is_valid and not ctx.trace_flags.sampled


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[trace.Span]:
    """A child of the current span, current inside the ``with`` block (a no-op when off or unsampled)."""
    if _tracer is None or _unsampled():
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
    if _tracer is None or (parent.is_valid and not parent.trace_flags.sampled if parent is not None else _unsampled()):
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
    # An ended parent is no longer recording; whether it was sampled is what counts.
    if _tracer is None or (not parent.get_span_context().trace_flags.sampled if parent is not None else _unsampled()):
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

