"""Micro-batching of classify requests into shared forward passes.

A request joins a pending list and, if no drain job is queued, queues one on
the model worker. The drain job binds its batch *when it starts running*, not
when it was queued: while the worker is busy (another batch, a chat token)
requests keep accumulating and all ride the next pass. When the worker is
idle the drain waits at most ``max_wait_s`` after the oldest request for
companions (or until ``max_batch`` are there), so a lone request pays a few
milliseconds at most. Identical texts in a batch are computed once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference_svc.core.worker import ModelWorker
from reprise.errors import ResourceExhausted

R = TypeVar("R")


@dataclass(frozen=True)
class Batched(Generic[R]):
    value: R
    queue_ms: float
    compute_ms: float
    batch_size: int


@dataclass(eq=False)
class _Item:
    text: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class ClassifyBatcher(Generic[R]):
    """Collects texts and runs ``compute(texts) -> results`` (same order; an Exception value fails that text)."""

    def __init__(
        self,
        worker: ModelWorker,
        compute: Callable[[Sequence[str]], Sequence[R | Exception]],
        max_batch: int = 16,
        max_wait_s: float = 0.003,
        max_pending: int = 256,
    ) -> None:
        self._worker = worker
        self._compute = compute
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._scheduled = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def classify(self, text: str) -> Batched[R]:
        loop = asyncio.get_running_loop()
        item = _Item(text, loop, loop.create_future())
        with self._cond:
            if len(self._pending) >= self.max_pending:
                raise ResourceExhausted(f"{self.max_pending} classify requests are already waiting; retry with backoff")
            self._pending.append(item)
            schedule = not self._scheduled
            self._scheduled = True
            self._cond.notify()
        if schedule:
            try:
                self._worker.submit(self._drain)
            except Exception:
                with self._cond:
                    self._pending.remove(item)
                    self._scheduled = False
                raise
        return await item.future

    def _take(self) -> tuple[list[_Item], bool]:
        """On the worker: wait (bounded) for a fuller batch, then take it. Also says whether more wait."""
        with self._cond:
            if self._pending:
                deadline = self._pending[0].enqueued + self.max_wait_s
                while len(self._pending) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    self._cond.wait(left)
            batch = [i for i in self._pending[: self.max_batch] if not i.future.cancelled()]
            del self._pending[: self.max_batch]
            more = bool(self._pending)
            self._scheduled = more
        return batch, more

    def _drain(self, cancelled: threading.Event) -> None:
        batch, more = self._take()
        if batch:
            self._run(batch)
        if more:
            try:
                self._worker.submit(self._drain)  # behind work queued meanwhile (chat tokens interleave)
            except Exception:
                self._drain(cancelled)  # queue full or closing: serve the rest now rather than strand it

    def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            results: Sequence[R | Exception] = self._compute([i.text for i in batch])
        except Exception as exc:  # the whole pass failed: every request in it gets the error
            results = [exc] * len(batch)
        done = time.perf_counter()
        for item, result in zip(batch, results):
            value: object = result
            if not isinstance(result, Exception):
                value = Batched(result, (started - item.enqueued) * 1000, (done - started) * 1000, len(batch))
            item.loop.call_soon_threadsafe(_settle, item.future, value)


def _settle(future: asyncio.Future, value: object) -> None:
    if future.done():
        return
    if isinstance(value, Exception):
        future.set_exception(value)
    else:
        future.set_result(value)
