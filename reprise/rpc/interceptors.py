"""One server interceptor per service: request id, error mapping, per-RPC metrics.

Servicers stay thin: they raise :class:`~reprise.errors.ServiceError`
subclasses and this module turns them into gRPC statuses. Anything else is a
bug: it becomes INTERNAL with a generic message (plus the request id, so an
operator can find the one log line with the traceback).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import AbortError

from reprise import tracing
from reprise.rpc import metrics
from reprise.errors import InvalidArgument, ServiceError
from reprise.rpc.logs import REQUEST_ID_HEADER, request_id

log = logging.getLogger(__name__)


def _incoming_request_id(context: grpc.aio.ServicerContext) -> str:
    # With tracing on, the trace id is the request id: one id finds both the log lines and the trace.
    trace_id = tracing.current_trace_id()
    if trace_id is not None:
        return trace_id
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and value:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return uuid.uuid4().hex[:16]


class _Undecodable:
    """What the request deserializer hands over instead of raising on bytes it cannot parse.

    A raising deserializer makes grpc answer UNKNOWN ("Unexpected DecodeError")
    and log a traceback per call; this value lets the handler answer
    INVALID_ARGUMENT with one log line instead.
    """

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            "request", f"is not a valid {self.type_name} (string fields must be valid UTF-8): {self.reason}"
        )


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)  # Message.FromString is bound to its class
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "message")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as err:  # DecodeError, or whatever a custom deserializer raises
            return _Undecodable(type_name, str(err).splitlines()[0] if str(err) else type(err).__name__)

    return parse


def _reject_undecodable(method: str, request: Any) -> None:
    if isinstance(request, _Undecodable):
        err = request.error()
        log.warning("%s: %s", method, err.message)  # one line, no traceback: the caller's bytes, not our bug
        raise err


def _final_code(context: grpc.aio.ServicerContext, raised: grpc.StatusCode | None) -> str:
    if raised is not None:
        return raised.name
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


class WrapOnce(grpc.aio.ServerInterceptor):
    """A server interceptor that wraps each method's handler once, in :meth:`_wrap`.

    The handler a method resolves to never changes, so the wrapped one is kept:
    a call pays a dictionary lookup, not a new closure per call.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(handler_call_details)
        self._wrapped[method] = self._wrap(method, handler)
        return self._wrapped[method]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        raise NotImplementedError


class ServiceInterceptor(WrapOnce):
    """Wraps every unary-unary and unary-stream handler of one service."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        # Health and reflection are left alone: probes must not depend on our code paths.
        if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        short = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(short, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(short, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        latency = metrics.RPC_LATENCY.labels(self._service, method)
        in_flight = metrics.RPC_IN_FLIGHT.labels(self._service, method)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id.set(_incoming_request_id(context))
            start = time.perf_counter()
            in_flight.inc()
            raised: grpc.StatusCode | None = None
            try:
                _reject_undecodable(method, request)
                return await behavior(request, context)
            except ServiceError as err:
                raised = grpc.StatusCode[err.code]
                await context.abort(raised, err.message)
            except AbortError:
                raise
            except Exception:
                raised = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id.get()})")
            finally:
                in_flight.dec()
                latency.observe(time.perf_counter() - start)
                metrics.RPC_REQUESTS.labels(self._service, method, _final_code(context, raised)).inc()

        return handle

    def _stream(
        self, method: str, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        latency = metrics.RPC_LATENCY.labels(self._service, method)
        in_flight = metrics.RPC_IN_FLIGHT.labels(self._service, method)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request_id.set(_incoming_request_id(context))
            start = time.perf_counter()
            in_flight.inc()
            raised: grpc.StatusCode | None = None
            try:
                _reject_undecodable(method, request)
                async for item in behavior(request, context):
                    yield item
            except ServiceError as err:
                raised = grpc.StatusCode[err.code]
                await context.abort(raised, err.message)
            except AbortError:
                raise
            except Exception:
                raised = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id.get()})")
            finally:
                in_flight.dec()
                latency.observe(time.perf_counter() - start)
                metrics.RPC_REQUESTS.labels(self._service, method, _final_code(context, raised)).inc()

        return handle
