"""Micro-batching of classify requests into shared forward passes.

A request joins a pending list and, if no drain job is queued, queues one on
the model worker. The drain job binds its batch *when it starts running*, not
when it was queued: while the worker is busy (another batch, a chat token)
requests keep accumulating and all ride the next pass. When the worker is
idle the drain waits at most ``max_wait_s`` after the oldest request for
companions (or until ``max_batch`` are there), so a lone request pays a few
milliseconds at most. Identical texts in a batch are computed once.

When more requests wait than one batch holds, the batch takes them round-robin
between tenants (oldest first within each), so one tenant's burst does not push
another tenant's request to a later pass. Each pass's duration and token count
feed the worker's prefill rate (:class:`~.scheduling.Rates`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference_svc.core.scheduling import DEFAULT_TENANT
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
    tenant: str = DEFAULT_TENANT
    #: Prefill tokens of the text (0 when unknown: the pass then teaches the rates nothing).
    tokens: int = 0
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

    async def classify(self, text: str, tenant: str = DEFAULT_TENANT, tokens: int = 0) -> Batched[R]:
        loop = asyncio.get_running_loop()
        item = _Item(text, loop, loop.create_future(), tenant, tokens)
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
            taken = _round_robin(self._pending, self.max_batch)
            chosen = set(map(id, taken))
            self._pending = [i for i in self._pending if id(i) not in chosen]
            batch = [i for i in taken if not i.future.cancelled()]
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
        tokens = sum(i.tokens for i in batch)
        if tokens and all(i.tokens for i in batch):
            self._worker.rates.observe("prefill", tokens, done - started)
        for item, result in zip(batch, results):
            value: object = result
            if not isinstance(result, Exception):
                value = Batched(result, (started - item.enqueued) * 1000, (done - started) * 1000, len(batch))
            item.loop.call_soon_threadsafe(_settle, item.future, value)


def _round_robin(pending: list[_Item], n: int) -> list[_Item]:
    """Up to ``n`` items, one per tenant in turn (tenants in order of their oldest item), oldest first."""
    if len(pending) <= n:
        return list(pending)
    queues: dict[str, list[_Item]] = {}
    for item in pending:
        queues.setdefault(item.tenant, []).append(item)
    taken: list[_Item] = []
    depth = 0
    while len(taken) < n:
        for items in queues.values():
            if depth < len(items) and len(taken) < n:
                taken.append(items[depth])
        depth += 1
    return taken


def _settle(future: asyncio.Future, value: object) -> None:
    if future.done():
        return
    if isinstance(value, Exception):
        future.set_exception(value)
    else:
        future.set_result(value)
