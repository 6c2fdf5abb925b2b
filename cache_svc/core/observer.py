"""Where the cache reports events: Prometheus in production (:mod:`cache_svc.metrics`), nowhere in tests.

The core never imports the metrics module (it is the service's edge, like gRPC); the
composition root passes an :class:`Observer` in. Levels (vectors indexed, local entries,
open watch streams) are not pushed: the metrics module reads them from the service when
scraped (:meth:`CacheService.levels`).
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def stage(self, name: str, seconds: float) -> None:
        """One lookup stage took ``seconds`` (normalize, exact, embed, search, fetch, guard)."""

    def lookup(self, tier: str) -> None:
        """A lookup was answered by ``tier``: exact, semantic, miss."""

    def exact_hit(self, source: str) -> None:
        """An exact hit came from ``source``: local, redis."""

    def rejected(self, reason: str) -> None:
        """Verification refused a candidate above the threshold (``reason``: its first word)."""

    def stored(self, semantic: bool) -> None: ...

    def invalidated(self, target: str, removed: int) -> None: ...

    def event(self, kind: str) -> None:
        """A pub/sub event from any replica was applied (stored, key, namespace, model)."""


class NullObserver:
    """Reports nowhere (unit tests, embedding the service elsewhere)."""

    def stage(self, name: str, seconds: float) -> None:
        pass

    def lookup(self, tier: str) -> None:
        pass

    def exact_hit(self, source: str) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def stored(self, semantic: bool) -> None:
        pass

    def invalidated(self, target: str, removed: int) -> None:
        pass

    def event(self, kind: str) -> None:
        pass
