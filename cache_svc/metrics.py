"""Prometheus metrics of the cache service (``reprise_cache_`` prefix).

Module-level collectors: several replicas in one test process share them,
which only adds their counts; per-replica numbers are in the Stats RPC.
"""

from __future__ import annotations

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
