"""Bursts: identical requests in flight share one whole flow, cache lookup included.

The singleflight of :mod:`.calls` starts after the cache answered, keyed on the
cache's key, so a burst of identical requests still made one lookup each. Under a
burst those lookups queue behind one another in the cache (its embedder) past
their budget: 50 identical Chats came back 48 BYPASS, and a BYPASS leader ran the
model a second time. Here the key is the request itself (tenant, task, text,
system prompt, history, decoding, model) with its resolved plan, taken *before*
the lookup: the first request runs lookup -> (hit | model call -> write-back), the
others read what it found and the reply it streams, and report its cache status
marked ``coalesced``.

The plan is part of the key because it changes what the flow does (a ``no_cache``
request never reads a lookup made for a caching one; a running no_cache flow is
as fresh as its own would be). Sampled requests (``plan.coalesce`` false) never
come here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass

from gateway.core.front import Found
from gateway.core.singleflight import Flight, SingleFlight
from gateway.core.types import CacheInfo


@dataclass(frozen=True, slots=True)
class Looked:
    """First item of every flow: what the lookup found and where the answer comes from.

    A hit carries its answer in ``found``; a miss is followed by the model call's
    items (``call`` is that call's flight, which a joined request's span links to).
    """

    found: Found
    info: CacheInfo
    call: Flight[object] | None = None


class Bursts:
    """Flows in flight by request.

    A finished flow lingers until its answer is in the cache (its write-back is
    done): a request of the same burst arriving after the answer but before the
    write-back would otherwise ask the cache for nothing. Then it is forgotten, and
    the next identical request asks again and finds the answer in the hot layer.
    A flow that served a hit, or failed, is forgotten at once.
    """

    def __init__(self) -> None:
        self._flights: SingleFlight[object] = SingleFlight()

    def __len__(self) -> int:
        return len(self._flights)

    def join(
        self, key: Hashable, flow: Callable[[], AsyncIterator[object]], reuse_finished: bool
    ) -> tuple[Flight[object], bool]:
        """The flow for ``key``: one in flight (joined: True), or ``flow()`` started now (False).

        ``reuse_finished`` false (a no_cache request wants a fresh answer): a running
        flow is as fresh as its own would be, a finished one is not.
        """
        flight = self._flights.get(key, include_finished=reuse_finished)
        if flight is not None:
            return flight, True
        flight = self._flights.start(key, flow())
        flight.add_done_callback(lambda f: self.answered(key, f) if f.succeeded else self._flights.forget(key, f))
        return flight, False

    def answered(self, key: Hashable, flight: Flight[object]) -> None:
        """``flight`` has the whole answer: forget it once that answer is in the cache.

        Called by the first reader that read the whole answer (sooner than the flow's
        own end, which a caller issuing its next request would race) and when the flow ends.
        """
        looked: Looked = flight.items[0]  # type: ignore[assignment]
        if looked.call is None:
            self._flights.forget(key, flight)
        else:
            looked.call.add_settled_callback(lambda: self._flights.forget(key, flight))

    def drop_finished(self) -> None:
        """An invalidation arrived: finished flows may hold answers that are no longer wanted."""
        self._flights.drop_finished()
