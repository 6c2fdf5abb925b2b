"""Misses become model calls: at most one per key in flight, bounded in number, written back after."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import replace
from typing import TypeVar

from gateway.core.front import CacheFront, Found
from gateway.core.limits import Admission
from gateway.core.policy import Plan
from gateway.core.ports import Observer
from gateway.core.singleflight import Flight, SingleFlight
from gateway.core.stats import Counters
from gateway.core.types import CacheInfo, CacheRequest, CacheStatus, InferenceChunk
from reprise import tracing
from reprise.domain import Answer, Usage
from reprise.errors import Unavailable

T = TypeVar("T")


class ModelCalls:
    def __init__(
        self, front: CacheFront, admission: Admission, counters: Counters, observer: Observer, linger_s: float
    ) -> None:
        self._front = front
        self._admission = admission
        self._counters = counters
        self._observer = observer
        self._linger_s = linger_s
        self._flights: SingleFlight[object] = SingleFlight()

    def drop_finished(self) -> None:
        """An invalidation arrived: finished calls may hold answers that are no longer wanted."""
        self._flights.drop_finished()

    def join(
        self,
        task: str,
        request: CacheRequest,
        found: Found,
        plan: Plan,
        source: Callable[[], AsyncIterator[object]],
        answer_of: Callable[[list[object]], Answer | None],
    ) -> tuple[Flight[object], CacheInfo]:
        """The flight computing this request: an identical one in flight, or a new model call.

        Raises RESOURCE_EXHAUSTED when a new call would exceed the model-call limit.
        """
        # The cache's key when it was asked (spelling variants coalesce), else the raw request.
        key: Hashable = found.info.key or request
        if plan.coalesce:
            # A no_cache caller wants a fresh answer: a running flight is fresh, a finished one is not.
            flight = self._flights.get(key, include_finished=plan.lookup)
            if flight is not None:
                self._observer.coalesced(task)
                if tracing.enabled():
                    trace_join(task, request, flight)
                return flight, replace(found.info, coalesced=True)
        tenant = request.namespace
        self._admission.acquire(tenant)
        t = time.perf_counter()
        # The model call's span lasts as long as the flight, whoever reads it; the flight's
        # task is created inside it, so the RPC to inference is its child.
        requested_by = tracing.current()
        span = tracing.start("gateway.inference", {tracing.TASK: task, tracing.NAMESPACE: request.namespace})
        with tracing.use(span):
            flight = self._flights.start(key, source()) if plan.coalesce else Flight(source())
        flight.span_context = span.get_span_context()

        def done(f: Flight[object]) -> None:
            tracing.end(span, f.error)
            self._admission.release(tenant)
            self._counters.model_call(tenant)
            self._observer.model_call(task, time.perf_counter() - t)
            if not plan.coalesce:
                f.settle()
                return
            answer = answer_of(f.items) if f.succeeded else None
            write = _store_traced(self._front, request, answer, plan, requested_by) if answer is not None else None
            if write is None:
                self._flights.forget(key, f)
                f.settle()
                return
            write.add_done_callback(lambda _: f.settle())
            # Linger until the answer is visible in the cache, plus one lookup budget: any lookup
            # that missed before the write landed finds this flight instead of calling the model.
            loop = asyncio.get_running_loop()
            write.add_done_callback(lambda _: loop.call_later(self._linger_s, self._flights.forget, key, f))

        flight.add_done_callback(done)
        return flight, found.info


def trace_join(task: str, request: CacheRequest, flight: Flight[object]) -> None:
    """A span from joining an identical model call until it finished, linked to that call."""
    span = tracing.start(
        "gateway.singleflight_join",
        {tracing.TASK: task, tracing.NAMESPACE: request.namespace, tracing.COALESCED: True},
        links=(flight.span_context,) if isinstance(flight.span_context, tracing.SpanContext) else (),
    )
    flight.add_done_callback(lambda f: tracing.end(span, f.error))


def _store_traced(
    front: CacheFront, request: CacheRequest, answer: Answer, plan: Plan, requested_by: tracing.SpanContext
) -> asyncio.Task[None] | None:
    """The write-back, traced in the trace of the request that computed the answer.

    The response did not wait for it, so besides its parent it carries a link: the
    request caused it, but it is no part of the request's latency.
    """
    if not tracing.enabled():
        return front.store_later(request, answer, plan)
    span = tracing.start(
        "gateway.cache_write_back", {tracing.TASK: request.task, tracing.NAMESPACE: request.namespace},
        links=(requested_by,),
        parent=requested_by,
    )
    with tracing.use(span):
        write = front.store_later(request, answer, plan)
    if write is None:
        span.end()
    else:
        write.add_done_callback(lambda _: span.end())
    return write


async def one(fn: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
    """A single awaited result as a one-item stream (what a flight carries)."""
    yield await fn()


async def until_finished(chunks: AsyncIterator[InferenceChunk]) -> AsyncIterator[InferenceChunk]:
    """A reply stream that ends at its finish chunk.

    The reply is complete there, so the flight completes (and is stored) at once,
    not when the transport's end-of-stream arrives: a streaming caller that stops
    reading after the last piece must not leave the flight unfinished and cancel it.
    """
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            yield chunk
            if chunk.finish is not None:
                return


def unusable(found: Found, plan: Plan) -> Found:
    """Pass a miss through; a hit that cannot answer this task (wrong kind of entry) becomes one."""
    if found.hit is None:
        return found
    info = CacheInfo(CacheStatus.MISS, key=found.info.key, store=plan.store)
    return Found(None, info, found.cache_ms, found.stages)


def complete(last: InferenceChunk | None) -> None:
    """Inference streams end with a finish reason; anything else is a broken stream, never stored."""
    if last is None or last.finish is None:
        raise Unavailable("inference: the reply stream ended before the reply was complete")


def reply_answer(items: list[object]) -> Answer | None:
    """The answer to store for a streamed reply: only a complete, successful one."""
    if not items:
        return None
    last: InferenceChunk = items[-1]  # type: ignore[assignment]
    if last.finish is None:
        return None
    reply = "".join(c.delta for c in items)  # type: ignore[attr-defined]
    return Answer(reply=reply, finish=last.finish, usage=last.usage or Usage())
