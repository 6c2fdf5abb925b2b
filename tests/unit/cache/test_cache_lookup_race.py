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
