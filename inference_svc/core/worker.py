"""One thread owns the model; the event loop hands it work through a bounded queue.

torch releases the GIL inside its kernels, but the model is not safe to call
from several threads and two concurrent forward passes would only fight over
the same cores. So exactly one thread runs model code. The asyncio side
submits a job and awaits a future (or an async iterator for streams); results
and exceptions come back through ``loop.call_soon_threadsafe`` as values, so a
failing request never kills the worker. A full queue is refused at once with
:class:`~reprise.errors.ResourceExhausted` instead of piling up.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reprise.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
_STREAM_END = object()


@dataclass
class _Job:
    run: Callable[[], None]
    #: Set when the caller went away (cancelled, deadline): the job may skip or stop early.
    cancelled: threading.Event = field(default_factory=threading.Event)


class ModelWorker:
    """A single daemon thread executing jobs from a bounded FIFO queue."""

    def __init__(self, max_queue: int, name: str = "model-worker") -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled.is_set():
                continue
            try:
                job.run()
            except BaseException:  # the job reports its own errors; this is a bug guard
                log.exception("model worker job crashed")

    def _put(self, job: _Job) -> None:
        if self._closed:
            raise Unavailable("inference service is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ResourceExhausted(
                f"inference queue is full ({self._queue.maxsize} waiting); retry with backoff"
            ) from None

    async def call(self, fn: Callable[[threading.Event], T]) -> T:
        """Run ``fn(cancelled)`` on the worker and return its result (or raise its exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        job = _Job(run=lambda: None)

        def run() -> None:
            try:
                result = fn(job.cancelled)
            except Exception as exc:  # passed back as a value: the worker survives
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

    async def stream(self, fn: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
        """Run the generator ``fn(cancelled)`` on the worker, yielding its items here as they come.

        When the consumer stops iterating (client cancelled, deadline), the
        ``cancelled`` event is set and the generator is closed at its next item,
        so decoding stops within one token.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        job = _Job(run=lambda: None)

        def run() -> None:
            gen = fn(job.cancelled)
            try:
                for item in gen:
                    loop.call_soon_threadsafe(items.put_nowait, (True, item))
                    if job.cancelled.is_set():
                        break
            except Exception as exc:
                loop.call_soon_threadsafe(items.put_nowait, (False, exc))
            finally:
                gen.close()
                loop.call_soon_threadsafe(items.put_nowait, (True, _STREAM_END))

        job.run = run
        self._put(job)
        try:
            while True:
                ok, item = await items.get()
                if not ok:
                    raise item
                if item is _STREAM_END:
                    return
                yield item
        finally:
            job.cancelled.set()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let queued ones finish, and join the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
