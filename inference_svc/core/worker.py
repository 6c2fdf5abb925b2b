"""One thread owns the model; the event loop hands it work through a bounded queue.

torch releases the GIL inside its kernels, but the model is not safe to call
from several threads and two concurrent forward passes would only fight over
the same cores. So exactly one thread runs model code.

Two kinds of job:

- *calls* run to completion (a classify batch, loading, warm-up);
- *streams* are generators (a chat reply) advanced step by step. Between two
  steps the worker runs every waiting call, so a classify request waits for
  at most one step, not for a whole reply.

Decode is batched across streams (continuous batching): a stream that needs
a decode pass yields a :class:`~.scheduling.Step` carrying a
:class:`~.scheduling.BatchPart` and is parked; once every active stream has
parked (or done one prefill chunk, or finished), the worker runs one pass
for all parked parts of the same ``run`` (one forward with a row per stream)
and resumes them. So each round advances every decoding stream by one token
in one forward, and a stream joins (its prefill done) or leaves (finished,
cancelled) between rounds.

Between any two steps of any stream the worker runs every waiting call, so a
short classify waits for at most one step: one decode pass, or one prefill
chunk of a long prompt (streams yield :class:`~.scheduling.Step` items per
chunk, which the worker times to learn prefill and decode rates). Streams wait
for a decode slot in one queue per tenant, served round-robin, so one tenant's
burst does not hold everyone else's requests behind it.

Results and exceptions travel back through ``loop.call_soon_threadsafe`` as
values, so a failing request never kills the worker. A full queue is refused
at once with :class:`~reprise.errors.ResourceExhausted`; a caller that goes
away (cancelled, deadline) sets the job's ``cancelled`` event and its stream
is closed before the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from inference_svc.core.observer import NullObserver, Observer
from inference_svc.core.scheduling import DEFAULT_TENANT, BatchPart, Rates, Step, Ticket
from reprise.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


@dataclass(eq=False)
class _Job:
    #: For calls: runs the whole job. For streams: returns the iterator to advance.
    run: Callable[[], Any]
    stream: bool = False
    #: Set when the caller went away (cancelled, deadline): the job may skip or stop early.
    cancelled: threading.Event = field(default_factory=threading.Event)
    deliver: Callable[[bool, Any], None] = lambda ok, item: None
    iterator: Iterator[Any] | None = None
    tenant: str = DEFAULT_TENANT
    #: Counted down as the stream's steps finish (see :class:`~.scheduling.Admission`).
    ticket: Ticket | None = None
    #: The shared pass the stream waits for (parked) before its next step.
    part: BatchPart | None = None


class ModelWorker:
    """A single daemon thread running calls and interleaved streams from a bounded queue."""

    def __init__(
        self,
        max_queue: int,
        max_active_streams: int = 4,
        name: str = "model-worker",
        rates: Rates | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.max_queue = max_queue
        self._observer: Observer = observer or NullObserver()
        self._observer.queue_capacity(max_queue)
        self.max_active_streams = max_active_streams
        #: Fed with the duration of every stream step that says what it computed.
        self.rates = rates if rates is not None else Rates()
        self._cond = threading.Condition()
        self._calls: deque[_Job] = deque()
        #: Per tenant, in round-robin order: the next slot goes to the first tenant, which then moves last.
        self._waiting_streams: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._waiting_count = 0
        self._active: list[_Job] = []
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        #: When the worker last finished something (a step, a call) or woke up: a step is timed from here.
        self._mark = time.perf_counter()
        self._closing = False
        #: Decode tokens of the current round and the seconds they took (their steps and shared passes).
        self._decode_tokens = 0
        self._decode_seconds = 0.0

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting: calls not yet run, and streams beyond the free decode slots.

        A stream that will take a free slot on the worker's next step is not
        waiting, even if the worker has not picked it up yet: counting it would
        refuse a burst that arrives faster than the worker thread wakes up.
        (``_active`` shrinks outside the lock, so a stale read only overcounts.)
        """
        free_slots = max(0, self.max_active_streams - len(self._active))
        return len(self._calls) + max(0, self._waiting_count - free_slots)

    @property
    def contended(self) -> bool:
        """Whether anything else wants the worker: a queued call, a waiting stream, or another active one."""
        return bool(self._calls) or self._waiting_count > 0 or len(self._active) > 1

    # -- the worker thread ----------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._calls or self._waiting_count or self._active or self._closing):
                    self._cond.wait()
                    self._mark = time.perf_counter()
                if self._closing and not (self._calls or self._waiting_count or self._active):
                    return
                while self._waiting_count and len(self._active) < self.max_active_streams:
                    self._active.append(self._next_waiting())
                self._publish()
            self._run_calls()
            self._round()
            self._observer.active_streams(len(self._active))

    def _round(self) -> None:
        """Every active stream once: up to its next pass (parked), one prefill chunk, or its end; then the passes."""
        self._decode_tokens, self._decode_seconds = 0, 0.0
        for job in list(self._active):
            while True:
                self._run_calls()  # before every step: a call waits for one step, not one per active stream
                more, worked = self._step(job)
                if not more:
                    self._active.remove(job)
                    break
                if worked or job.part is not None:
                    break  # it computed (a chunk, a token) or waits for its pass: the other streams' turn
        parked = [job for job in self._active if job.part is not None]
        if parked:
            self._run_calls()
            self._run_passes(parked)
        if self._decode_tokens:
            # A round's decode: its passes plus each stream's own step (sampling, detokenizing).
            self.rates.observe("decode", self._decode_tokens, self._decode_seconds)

    def _run_passes(self, parked: list[_Job]) -> None:
        """One call of each ``run`` for the parked streams waiting on it; they resume in the next round."""
        groups: dict[Any, list[_Job]] = {}
        for job in parked:
            if job.cancelled.is_set():
                self._finish(job)  # closed before its pass: no row is computed for nobody
                self._active.remove(job)
            else:
                assert job.part is not None
                groups.setdefault(job.part.run, []).append(job)
        for run, jobs in groups.items():
            start = time.perf_counter()
            try:
                run([job.part for job in jobs])
            except Exception as exc:  # the whole pass failed: every stream in it gets the error
                for job in jobs:
                    job.deliver(False, exc)
                    self._finish(job)
                    self._active.remove(job)
                continue
            finally:
                self._mark = time.perf_counter()
            self._decode_seconds += self._mark - start
            for job in jobs:
                job.part = None

    def _next_waiting(self) -> _Job:
        """Round-robin between tenants (under the lock): the first tenant's oldest stream; it moves last."""
        tenant, jobs = next(iter(self._waiting_streams.items()))
        job = jobs.popleft()
        if jobs:
            self._waiting_streams.move_to_end(tenant)
        else:
            del self._waiting_streams[tenant]
        self._waiting_count -= 1
        return job

    def _run_calls(self) -> None:
        with self._cond:
            if not self._calls:
                return
            calls = list(self._calls)
            self._calls.clear()
            self._publish()
        for job in calls:
            if not job.cancelled.is_set():
                self._run_call(job)
        self._mark = time.perf_counter()  # a call times itself (the batcher prices its pass)

    def _publish(self) -> None:
        self._observer.queue_depth(self.depth)

    @staticmethod
    def _run_call(job: _Job) -> None:
        try:
            job.run()
        except BaseException:  # the job reports its own errors; this is a bug guard
            log.exception("model worker job crashed")

    def _step(self, job: _Job) -> tuple[bool, bool]:
        """Advance a stream by one item: (whether it goes on, whether the step computed tokens)."""
        try:
            if job.iterator is None:
                job.iterator = job.run()
            if job.cancelled.is_set():
                raise StopIteration
            item = next(job.iterator)
            # Timed from the end of the worker's previous piece of work, not from next(): the rates must
            # say how fast work gets *done*, so the time the worker thread waits for the GIL, the lock
            # and the hand-off between steps counts too (under load it can double the time per token).
            now = time.perf_counter()
            seconds, self._mark = now - self._mark, now
            worked = False
            if isinstance(item, Step):
                self._account(job, item, seconds)
                job.part = item.batch
                worked = bool(item.prefill_tokens or item.decode_tokens)
                if item.item is None:
                    return True, worked
                item = item.item
            job.deliver(True, item)
            return True, worked
        except StopIteration:
            pass
        except Exception as exc:  # passed back as a value: the worker survives
            job.deliver(False, exc)
        except BaseException:
            log.exception("model worker stream crashed")
        self._finish(job)
        return False, False

    def _finish(self, job: _Job) -> None:
        """Close a stream (its generator's cleanup runs, e.g. storing its KV) and tell its consumer it ended."""
        job.part = None
        if job.iterator is not None:
            try:
                job.iterator.close()
            except Exception:
                log.exception("closing a stream failed")
        job.deliver(True, _END)
        self._mark = time.perf_counter()

    def _account(self, job: _Job, step: Step, seconds: float) -> None:
        # A prefill step is one chunk, so its time prices prefill. A decode token's time is summed over the
        # round with the passes it shares (see _round): a batched pass prices all its streams' tokens at once.
        if step.prefill_tokens and not step.decode_tokens:
            self.rates.observe("prefill", step.prefill_tokens, seconds)
        elif step.decode_tokens and not step.prefill_tokens:
            self._decode_tokens += step.decode_tokens
            self._decode_seconds += seconds
        if job.ticket is not None:
            job.ticket.progress(step.prefill_tokens, step.decode_tokens)

    # -- the asyncio side -------------------------------------------------------

    def _put(self, job: _Job) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("inference service is shutting down")
            if self.depth >= self.max_queue:
                raise ResourceExhausted(f"inference queue is full ({self.max_queue} waiting); retry with backoff")
            if job.stream:
                self._waiting_streams.setdefault(job.tenant, deque()).append(job)
                self._waiting_count += 1
            else:
                self._calls.append(job)
            self._publish()
            self._cond.notify()

    def submit(self, fn: Callable[[threading.Event], None]) -> threading.Event:
        """Queue ``fn(cancelled)`` without waiting for it (thread-safe). Returns its cancel event."""
        job = _Job(run=lambda: None)
        job.run = lambda: fn(job.cancelled)
        self._put(job)
        return job.cancelled

    async def call(self, fn: Callable[[threading.Event], T]) -> T:
        """Run ``fn(cancelled)`` on the worker and return its result (or raise its exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                future.set_result(value) if ok else future.set_exception(value)

        job = _Job(run=lambda: None)

        def run() -> None:
            try:
                result = fn(job.cancelled)
            except Exception as exc:
                loop.call_soon_threadsafe(settle, False, exc)
            else:
                loop.call_soon_threadsafe(settle, True, result)

        job.run = run
        self._put(job)
        try:
            return await future
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

    async def stream(
        self,
        fn: Callable[[threading.Event], Iterator[Any]],
        tenant: str = DEFAULT_TENANT,
        ticket: Ticket | None = None,
    ) -> AsyncIterator[Any]:
        """Run the generator ``fn(cancelled)`` on the worker, yielding its items here as they come.

        A :class:`~.scheduling.Step` item is timed and accounted on the worker; only its
        ``item`` (when not None) reaches the consumer. When the consumer stops iterating
        (client cancelled, deadline), the ``cancelled`` event is set and the generator is
        closed before its next item.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        job = _Job(run=lambda: None, stream=True, tenant=tenant, ticket=ticket)
        job.run = lambda: fn(job.cancelled)
        job.deliver = lambda ok, item: loop.call_soon_threadsafe(items.put_nowait, (ok, item))
        self._put(job)
        try:
            while True:
                ok, item = await items.get()
                if not ok:
                    raise item
                if item is _END:
                    return
                yield item
        finally:
            job.cancelled.set()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let queued ones finish, and join the thread."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
