"""A lookup racing a store of the very same request reports an exact hit, never a semantic one."""

from __future__ import annotations

import time

import numpy as np

from cache_svc.core.index import PartitionInfo, VectorIndex
from cache_svc.core.keys import exact_key, partition_key
from cache_svc.core.normalize import Normalization
from cache_svc.core.service import CacheService
from cache_svc.core.types import CacheQuery, Entry, LookupOptions, Tier
from reprise.domain import Answer

DIM = 4


class _ConstantEmbedder:
    name = "constant"
    dim = DIM

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (len(texts), 1))


class _StoreMidWrite:
    """Redis as seen during a concurrent Store: the exact read came too early, the fetch sees it."""

    def __init__(self, entry: Entry) -> None:
        self._entry = entry

    async def get(self, key: str) -> Entry | None:
        return None

    async def get_many(self, keys: list[str]) -> list[Entry | None]:
        return [self._entry if k == self._entry.key else None for k in keys]


async def test_semantic_candidate_with_the_same_key_is_an_exact_hit() -> None:
    query = CacheQuery(namespace="t", task="chat", text="What is a cache?", model_id="m", model_revision="r")
    key = exact_key(query, Normalization())
    now = time.time()
    entry = Entry(key, "t", "chat", query.text, Answer(reply="A fast copy."), "m", "r", now, now + 60)
    index = VectorIndex(DIM)
    service = CacheService(_StoreMidWrite(entry), embedder=_ConstantEmbedder(), index=index)  # type: ignore[arg-type]
    index.add(
        partition_key(query, Normalization()),
        PartitionInfo("t", "m", "r", "chat"),
        [(key, _ConstantEmbedder().embed([query.text])[0], now + 60)],
    )
    result = await service.lookup(query, LookupOptions())
    assert result.tier is Tier.EXACT
    assert result.similarity == 1.0 and result.entry is entry


class _Recorder:
    """An Observer that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args: self.events.append((name, args))


async def test_the_service_reports_to_the_observer_it_was_given_and_levels_are_read_on_demand() -> None:
    query = CacheQuery(namespace="t", task="chat", text="What is a cache?", model_id="m", model_revision="r")
    key = exact_key(query, Normalization())
    now = time.time()
    entry = Entry(key, "t", "chat", query.text, Answer(reply="A fast copy."), "m", "r", now, now + 60)
    index = VectorIndex(DIM)
    seen = _Recorder()
    service = CacheService(_StoreMidWrite(entry), embedder=_ConstantEmbedder(), index=index,  # type: ignore[arg-type]
                           observer=seen)
    index.add(partition_key(query, Normalization()), PartitionInfo("t", "m", "r", "chat"),
              [(key, _ConstantEmbedder().embed([query.text])[0], now + 60)])
    await service.lookup(query, LookupOptions())
    names = [n for n, _ in seen.events]
    assert ("lookup", ("exact",)) in seen.events
    assert {"stage"} <= set(names) and [a[0] for n, a in seen.events if n == "stage"][:1] == ["normalize"]
    assert service.levels() == {"indexed_vectors": 1, "local_entries": 0, "watchers": 0}
    watcher = service.watch()
    assert service.levels()["watchers"] == 1
    del watcher
