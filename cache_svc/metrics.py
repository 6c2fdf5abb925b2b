"""Prometheus metrics of the cache service (``reprise_cache_`` prefix).

Module-level collectors: several replicas in one test process share them,
which only adds their counts (the level gauges read the last service started);
per-replica numbers are in the Stats RPC. The core reports through
:class:`PrometheusObserver`, passed in by the composition root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import Counter, Gauge, Histogram

# 20 µs (a local-tier hit) to 10 s (an embedding stuck behind a busy CPU): a stage is never a whole chat.
_STAGE_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
)

LOOKUPS = Counter("reprise_cache_lookups_total", "Lookups by the tier that answered (exact, semantic, miss).", ["tier"])
EXACT_SOURCE = Counter("reprise_cache_exact_hits_total", "Exact hits by where they came from (local, redis).", ["source"])
GUARD_REJECTIONS = Counter(
    "reprise_cache_guard_rejections_total", "Semantic candidates above the threshold rejected by the guard.", ["reason"]
)
STAGE_SECONDS = Histogram(
    "reprise_cache_stage_seconds", "Lookup time per pipeline stage.", ["stage"], buckets=_STAGE_BUCKETS
)
STORES = Counter("reprise_cache_stores_total", "Entries stored, by whether they entered the semantic index.", ["semantic"])
INVALIDATED = Counter("reprise_cache_invalidated_entries_total", "Entries removed by Invalidate, by target.", ["target"])
EVENTS = Counter("reprise_cache_events_total", "Pub/sub events applied from any replica, by kind.", ["kind"])
INDEXED_VECTORS = Gauge("reprise_cache_indexed_vectors", "Vectors in this process's semantic indexes.")
LOCAL_ENTRIES = Gauge("reprise_cache_local_entries", "Entries in this process's in-process exact tier.")
WATCHERS = Gauge("reprise_cache_watchers", "Open WatchInvalidations streams.")


class PrometheusObserver:
    """:class:`~cache_svc.core.observer.Observer` that counts into the collectors above."""

    def stage(self, name: str, seconds: float) -> None:
        STAGE_SECONDS.labels(name).observe(seconds)

    def lookup(self, tier: str) -> None:
        LOOKUPS.labels(tier).inc()

    def exact_hit(self, source: str) -> None:
        EXACT_SOURCE.labels(source).inc()

    def rejected(self, reason: str) -> None:
        GUARD_REJECTIONS.labels(reason).inc()

    def stored(self, semantic: bool) -> None:
        STORES.labels(str(semantic).lower()).inc()

    def invalidated(self, target: str, removed: int) -> None:
        INVALIDATED.labels(target).inc(removed)

    def event(self, kind: str) -> None:
        EVENTS.labels(kind).inc()


def read_levels(levels: Callable[[], Mapping[str, int]]) -> None:
    """Make the level gauges read ``levels()`` (the service's :meth:`levels`) when scraped."""
    INDEXED_VECTORS.set_function(lambda: levels()["indexed_vectors"])
    LOCAL_ENTRIES.set_function(lambda: levels()["local_entries"])
    WATCHERS.set_function(lambda: levels()["watchers"])
