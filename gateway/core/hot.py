"""The hot-key layer: exact hits answered from gateway memory, coherent with the cache.

Why it exists: a hit that goes gateway -> cache service -> back costs a second
gRPC hop (about half of a hit's latency and most of its CPU); answering from a
dict in the gateway costs microseconds. See docs/gateway.md for the numbers.

How it stays correct:

* Keyed by the raw request (:class:`~gateway.core.types.CacheRequest`), each
  entry remembers the cache's exact key, namespace and model, so the cache's
  invalidation events (by key, namespace or model) map back to entries.
* It serves only while the cache's ``WatchInvalidations`` stream is connected
  (:meth:`activate`); when the stream breaks it is emptied and stops serving,
  because events may be lost. A cache without the stream means no hot layer.
* Race with an invalidation: an entry is only inserted if no invalidation
  arrived since the lookup (or write-back) that produced it started
  (:attr:`epoch`), so an event can never be overtaken by the entry it removes.
* Bounded staleness whatever happens: an entry is served at most
  ``max_age_s`` after it was inserted (then the cache is asked again; only if
  that lookup fails is the copy served on), never past the cache entry's
  ``expires_at``, and never older than the request's ``max_age``.
* Only exact hits (and our own write-backs) enter it: whether a semantic hit
  is acceptable depends on each request's threshold, so those always go to the cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.types import CachedEntry, CacheRequest, Invalidation, InvalidationKind


@dataclass(frozen=True)
class HotConfig:
    #: Entries kept (LRU beyond); 0 disables the layer.
    max_entries: int = 10_000
    #: Longest an entry is served from memory before the cache is asked again (it is still
    #: served when that lookup fails: see ``stale_ok``).
    max_age_s: float = 60.0


@dataclass(slots=True)
class _Slot:
    entry: CachedEntry
    request: CacheRequest
    inserted: float


class HotLayer:
    def __init__(self, config: HotConfig = HotConfig(), clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._slots: OrderedDict[CacheRequest, _Slot] = OrderedDict()
        self._by_key: dict[str, set[CacheRequest]] = {}
        self._active = False
        #: Bumped by every invalidation; see :meth:`put`.
        self.epoch = 0

    @property
    def enabled(self) -> bool:
        return self._config.max_entries > 0

    @property
    def active(self) -> bool:
        return self._active

    def __len__(self) -> int:
        return len(self._slots)

    def count(self, namespace: str) -> int:
        """Entries of one tenant (a scan: for Stats, not for the request path)."""
        return sum(r.namespace == namespace for r in self._slots)

    def activate(self) -> None:
        """The invalidation stream is connected: start serving (from empty)."""
        self.clear()
        self._active = self.enabled

    def deactivate(self) -> None:
        """The invalidation stream broke: forget everything, serve nothing."""
        self._active = False
        self.clear()

    def clear(self) -> None:
        self.epoch += 1
        self._slots.clear()
        self._by_key.clear()

    def get(self, request: CacheRequest, max_age_s: int | None = None, *, stale_ok: bool = False) -> CachedEntry | None:
        """The entry for ``request``, if it may be served.

        ``stale_ok`` ignores the layer's own ``max_age_s`` bound (never the entry's
        expiry or the caller's max age): used when the cache cannot be asked, since
        an entry the invalidation stream has not removed is still the cache's answer.
        """
        if not self._active:
            return None
        slot = self._slots.get(request)
        if slot is None:
            return None
        now = self._clock()
        entry = slot.entry
        if entry.expires_at and now >= entry.expires_at:
            self._remove(request)
            return None
        if not stale_ok and now - slot.inserted > self._config.max_age_s:
            return None  # kept for a stale_ok read; the next lookup replaces it
        if max_age_s is not None and now - entry.created_at > max_age_s:
            return None  # too old for this caller, maybe not for the next one
        self._slots.move_to_end(request)
        return entry

    def put(self, request: CacheRequest, entry: CachedEntry, epoch: int) -> bool:
        """Insert unless an invalidation arrived since ``epoch`` was read (then the entry may be stale)."""
        if not self._active or epoch != self.epoch or not entry.key:
            return False
        if entry.expires_at and self._clock() >= entry.expires_at:
            return False
        if request in self._slots:
            self._remove(request)
        request = request.without_image_bytes()  # kept for minutes: its pictures' digests identify it
        self._slots[request] = _Slot(entry, request, self._clock())
        self._by_key.setdefault(entry.key, set()).add(request)
        while len(self._slots) > self._config.max_entries:
            oldest = next(iter(self._slots))
            self._remove(oldest)
        return True

    def _remove(self, request: CacheRequest) -> None:
        slot = self._slots.pop(request, None)
        if slot is None:
            return
        requests = self._by_key.get(slot.entry.key)
        if requests is not None:
            requests.discard(request)
            if not requests:
                del self._by_key[slot.entry.key]

    def invalidate(self, event: Invalidation) -> int:
        """Apply one event of the cache's stream; returns how many entries went."""
        self.epoch += 1
        if event.kind is InvalidationKind.KEY:
            doomed = list(self._by_key.get(event.value, ()))
        elif event.kind is InvalidationKind.NAMESPACE:
            doomed = [r for r in self._slots if r.namespace == event.value]
        else:
            doomed = [
                r
                for r in self._slots
                if r.model.model_id == event.value and (event.revision is None or r.model.revision == event.revision)
            ]
        for request in doomed:
            self._remove(request)
        return len(doomed)
