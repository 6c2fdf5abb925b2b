"""Singleflight: identical in-flight misses share one model call, streamed pieces included.

A :class:`Flight` runs its source in a task of its own and records every item
it yields; each caller (the one that started it and any that joined later)
reads the recorded items from the start and then follows live, so a joiner of
a streamed reply gets exactly the stream the first caller got. The flight is
not tied to any one caller: it keeps running while anyone still reads it and is
cancelled (which cancels the model call) when the last reader leaves.

After it finished, a flight may *linger* in the registry for a short while
(until its answer is visible in the cache): a request that missed the cache
in that window replays the finished flight instead of calling the model again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Generic, TypeVar

from reprise.errors import Unavailable

T = TypeVar("T")


class Flight(Generic[T]):
    def __init__(self, source: AsyncIterator[T]) -> None:
        self.items: list[T] = []
        self.error: BaseException | None = None
        self.done = False
        #: The model call's span (when tracing), for requests that join to link to.
        self.span_context: object | None = None
        self._readers = 0
        self._changed = asyncio.Event()
        self._on_done: list[Callable[[Flight[T]], None]] = []
        self._settled = False
        self._on_settled: list[Callable[[], None]] = []
        self._task = asyncio.ensure_future(self._run(source))
        self._task.add_done_callback(self._finished)

    @property
    def succeeded(self) -> bool:
        return self.done and self.error is None

    def add_done_callback(self, fn: Callable[[Flight[T]], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._on_done.append(fn)

    def settle(self) -> None:
        """Its answer is where later requests will find it (the cache), or never will be."""
        self._settled = True
        callbacks, self._on_settled = self._on_settled, []
        for fn in callbacks:
            fn()

    def add_settled_callback(self, fn: Callable[[], None]) -> None:
        if self._settled:
            fn()
        else:
            self._on_settled.append(fn)

    def _notify(self) -> None:
        # Wake every reader waiting on the current event, then arm a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self, source: AsyncIterator[T]) -> None:
        async for item in source:
            self.items.append(item)
            self._notify()

    def _finished(self, task: asyncio.Task[None]) -> None:
        # A task callback, not a ``finally`` in _run: it runs even when the task is
        # cancelled before its first step, so slots and registry entries never leak.
        if task.cancelled():
            # Only happens once nobody reads; should a joiner race in, it gets a retryable error.
            self.error = Unavailable("the identical request this one joined was cancelled")
        else:
            self.error = task.exception()
        self.done = True
        self._notify()
        callbacks, self._on_done = self._on_done, []
        for fn in callbacks:
            fn(self)

    async def read(self) -> AsyncIterator[T]:
        """Every item from the first, then live ones; re-raises the source's error."""
        self._readers += 1
        try:
            i = 0
            while True:
                if i < len(self.items):
                    i += 1
                    yield self.items[i - 1]
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            self._readers -= 1
            if self._readers == 0 and not self.done:
                self._task.cancel()


class SingleFlight(Generic[T]):
    """A registry of running (and lingering) flights by key."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: Hashable, include_finished: bool = True) -> Flight[T] | None:
        flight = self._flights.get(key)
        if flight is None or (flight.done and not include_finished):
            return None
        if flight.done and not flight.succeeded:
            return None
        return flight

    def start(self, key: Hashable, source: AsyncIterator[T]) -> Flight[T]:
        """Run ``source`` as the flight for ``key``; it stays registered until :meth:`forget`."""
        flight: Flight[T] = Flight(source)
        self._flights[key] = flight
        return flight

    def forget(self, key: Hashable, flight: Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def drop_finished(self) -> int:
        """Forget every lingering (finished) flight: their answers may have just been invalidated."""
        finished = [k for k, f in self._flights.items() if f.done]
        for k in finished:
            del self._flights[k]
        return len(finished)
