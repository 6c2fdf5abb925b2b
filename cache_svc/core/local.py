"""The in-process exact tier: a bounded LRU with per-entry expiry in front of Redis.

It holds decoded entries by key, so a repeated request costs one dict lookup
instead of a Redis round trip. It can only go stale when another replica
invalidates an entry; three things bound that:

- every replica applies the pub/sub invalidation events to this tier (the
  delay is the pub/sub hop, well under a millisecond on one host);
- no entry lives here longer than ``max_staleness_s`` (the bound should an
  event ever be lost), nor past its own ``expires_at``;
- the service bypasses and clears this tier whenever its event subscription
  is down, since it can then no longer hear invalidations.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TLRUCache

from cache_svc.core.types import Entry


class LocalTier:
    def __init__(self, max_entries: int = 10_000, max_staleness_s: float = 5.0) -> None:
        self._max_staleness_s = max_staleness_s
        self._cache: TLRUCache[str, Entry] | None = None
        if max_entries > 0 and max_staleness_s > 0:
            self._cache = TLRUCache(maxsize=max_entries, ttu=self._ttu, timer=time.time)

    def _ttu(self, key: str, entry: Entry, now: float) -> float:
        return min(entry.expires_at, now + self._max_staleness_s)

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    def get(self, key: str) -> Entry | None:
        if self._cache is None:
            return None
        entry = self._cache.get(key)
        # TLRUCache expires lazily on access using the same clock; this check keeps
        # the guarantee explicit should the clock and ``expires_at`` disagree.
        if entry is not None and entry.expires_at <= time.time():
            self._cache.pop(key, None)
            return None
        return entry

    def put(self, entry: Entry) -> None:
        if self._cache is not None and entry.expires_at > time.time():
            self._cache[entry.key] = entry

    def drop(self, key: str) -> None:
        if self._cache is not None:
            self._cache.pop(key, None)

    def drop_namespace(self, namespace: str) -> None:
        self._drop_where(lambda e: e.namespace == namespace)

    def drop_model(self, model_id: str, revision: str | None) -> None:
        self._drop_where(lambda e: e.model_id == model_id and (revision is None or e.model_revision == revision))

    def _drop_where(self, predicate: Callable[[Entry], bool]) -> None:
        if self._cache is None:
            return
        doomed = [k for k, e in list(self._cache.items()) if predicate(e)]
        for k in doomed:
            self._cache.pop(k, None)

    def clear(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    def __len__(self) -> int:
        if self._cache is None:
            return 0
        self._cache.expire()
        return len(self._cache)
