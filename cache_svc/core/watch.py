"""Fan-out of invalidation events to WatchInvalidations streams.

One Redis subscription per replica feeds every open stream; a stream is just
a bounded queue, so a client that goes away leaves nothing behind (the
servicer's generator unregisters in ``finally``). A watcher that falls more
than ``max_backlog`` events behind is ended with RESOURCE_EXHAUSTED rather
than silently skipping invalidations: it must resubscribe and drop what it holds.
On shutdown every stream ends cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from cache_svc.core.types import Invalidation
from reprise.errors import ResourceExhausted, Unavailable

_END = object()
_OVERFLOW = object()
_INTERRUPTED = object()


class InvalidationHub:
    def __init__(self, max_backlog: int = 10_000, max_watchers: int = 1_000) -> None:
        self._queues: set[asyncio.Queue[object]] = set()
        self._max_backlog = max_backlog
        self._max_watchers = max_watchers
        self._closed = False

    def __len__(self) -> int:
        return len(self._queues)

    def publish(self, invalidation: Invalidation) -> None:
        for q in list(self._queues):
            if q.qsize() >= self._max_backlog:
                self._queues.discard(q)
                q.put_nowait(_OVERFLOW)
            else:
                q.put_nowait(invalidation)

    @property
    def watchers(self) -> int:
        """Streams open now."""
        return len(self._queues)

    def watch(self) -> Watcher:
        """Register a stream now; iterate it for the invalidations that follow, until :meth:`close`."""
        if self._closed:
            raise Unavailable("the cache service is shutting down")
        if len(self._queues) >= self._max_watchers:
            raise ResourceExhausted(f"too many watchers (limit {self._max_watchers})")
        q: asyncio.Queue[object] = asyncio.Queue()
        self._queues.add(q)
        return Watcher(self, q)

    def _unregister(self, q: asyncio.Queue[object]) -> None:
        if q in self._queues:
            self._queues.discard(q)

    def interrupt(self) -> None:
        """End every stream with UNAVAILABLE: events may have been missed (Redis subscription lost)."""
        for q in list(self._queues):
            self._queues.discard(q)
            q.put_nowait(_INTERRUPTED)

    def close(self) -> None:
        """End every stream (shutdown)."""
        self._closed = True
        for q in list(self._queues):
            q.put_nowait(_END)


class Watcher:
    """One registered stream; ``async for`` it, and it unregisters when the loop ends."""

    def __init__(self, hub: InvalidationHub, queue: asyncio.Queue[object]) -> None:
        self._hub = hub
        self._q = queue
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._unregister(self._q)

    async def __aiter__(self) -> AsyncIterator[Invalidation]:
        try:
            while True:
                item = await self._q.get()
                if item is _END:
                    return
                if item is _OVERFLOW:
                    raise ResourceExhausted("watcher fell behind; resubscribe and drop what you hold")
                if item is _INTERRUPTED:
                    raise Unavailable("invalidation feed from redis interrupted; resubscribe and drop what you hold")
                yield item  # type: ignore[misc]
        finally:
            self.close()
