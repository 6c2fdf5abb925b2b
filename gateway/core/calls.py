"""Misses become model calls: at most one per key in flight, bounded in number, lingering until written back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import replace

from gateway.core.front import Found
from gateway.core.limits import Admission
from gateway.core.policy import Plan
from gateway.core.ports import Observer
from gateway.core.singleflight import Flight, SingleFlight
from gateway.core.stats import Counters
from gateway.core.types import CacheInfo, CacheRequest
from reprise import tracing

#: A model call's work: the answer's parts. It is handed a callable to report the write-back it
#: started once the answer was whole, so that the call lingers until that write landed.
Answering = Callable[[Callable[[asyncio.Task[None]], None]], AsyncIterator[object]]


class ModelCalls:
    def __init__(self, admission: Admission, counters: Counters, observer: Observer, linger_s: float) -> None:
        self._admission = admission
        self._counters = counters
        self._observer = observer
        self._linger_s = linger_s
        self._flights: SingleFlight[object] = SingleFlight()

    def drop_finished(self) -> None:
        """An invalidation arrived: finished calls may hold answers that are no longer wanted."""
        self._flights.drop_finished()

    def join(self, request: CacheRequest, found: Found, plan: Plan, answer: Answering) -> tuple[Flight[object], CacheInfo]:
        """The flight computing this request: an identical one in flight, or ``answer`` run now as a new model call.

        Raises RESOURCE_EXHAUSTED when a new call would exceed the model-call limit.
        """
        task = request.task
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
        written: list[asyncio.Task[None]] = []
        # The model call's span lasts as long as the flight, whoever reads it; the flight's
        # task is created inside it, so the RPC to inference is its child.
        span = tracing.start("gateway.inference", {tracing.TASK: task, tracing.NAMESPACE: tenant})
        with tracing.use(span):
            parts = answer(written.append)
            flight = self._flights.start(key, parts) if plan.coalesce else Flight(parts)
        flight.span_context = span.get_span_context()

        def done(f: Flight[object]) -> None:
            tracing.end(span, f.error)
            self._admission.release(tenant)
            self._counters.model_call(tenant)
            self._observer.model_call(task, time.perf_counter() - t)
            if not written:  # nothing stored: failed, not storing, or the cache is away
                self._flights.forget(key, f)
                f.settle()
                return
            written[0].add_done_callback(lambda _: f.settle())
            # Linger until the answer is visible in the cache, plus one lookup budget: any lookup
            # that missed before the write landed finds this flight instead of calling the model.
            loop = asyncio.get_running_loop()
            written[0].add_done_callback(lambda _: loop.call_later(self._linger_s, self._flights.forget, key, f))

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
