"""gRPC server spans, continuing the caller's W3C ``traceparent``.

Span names and attributes follow OpenTelemetry's RPC conventions (span
``/package.Service/Method``, ``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``), as ``opentelemetry-instrumentation-grpc`` writes
them. That package is not used because of what it costs per call on the
asyncio server: it re-wraps the method handler on every call, proxies the
servicer context through ``wrapt`` and parses the peer; measured on this
project's 2-core benchmark machine, about 150 µs of CPU per call whether the
call is sampled or not, a third of an exact hit's whole cost. Here the wrapped
handler is built once per method, an unsampled call costs a sampling decision
and a metadata scan (~7 µs), and status comes from the context once the call
ended. On the client side any grpc.aio interceptor adds a task per call, so
the gateway sends ``traceparent`` with its own metadata instead
(:func:`reprise.tracing.propagation`).

Health, reflection and the invalidation stream are never traced: probes would
drown the traces, and the stream lives as long as the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from reprise.rpc.interceptors import WrapOnce

_W3C = TraceContextTextMapPropagator()
_CARRIED = ("traceparent", "tracestate")
_EMPTY = Context()


def traced(method: str) -> bool:
    """Whether calls of ``method`` (``/package.Service/Method``) get spans."""
    return not (method.startswith(("/grpc.health.", "/grpc.reflection.")) or method.endswith("/WatchInvalidations"))


def _attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _incoming(context: grpc.aio.ServicerContext) -> Context:
    """The caller's trace context, or an empty one (this call starts a trace)."""
    carrier = {k: v for k, v in context.invocation_metadata() or () if k in _CARRIED}
    return _W3C.extract(carrier) if carrier else _EMPTY


def _server_status(span: trace.Span, context: grpc.aio.ServicerContext) -> None:
    if not span.is_recording():
        return
    code = context.code()
    code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))


class ServerSpans(WrapOnce):
    """One SERVER span per call, continuing the caller's trace; outermost, so it spans everything."""

    def __init__(self, tracer: trace.Tracer) -> None:
        super().__init__()
        self._tracer = tracer

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        if handler is None or not traced(method):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    # The span is attached by hand rather than with start_as_current_span: two generator-based
    # context managers per call are a measurable share of an exact hit.

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        attributes = _attributes(method)
        tracer = self._tracer

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = tracer.start_span(method, context=_incoming(context), kind=trace.SpanKind.SERVER, attributes=attributes)
            token = context_api.attach(trace.set_span_in_context(span))
            try:
                return await behavior(request, context)
            finally:
                context_api.detach(token)
                _server_status(span, context)
                span.end()

        return handle

    def _stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        attributes = _attributes(method)
        tracer = self._tracer

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = tracer.start_span(method, context=_incoming(context), kind=trace.SpanKind.SERVER, attributes=attributes)
            token = context_api.attach(trace.set_span_in_context(span))
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                context_api.detach(token)
                _server_status(span, context)
                span.end()

        return handle
