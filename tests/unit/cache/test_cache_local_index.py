"""The in-process exact tier and the FAISS indexes, without Redis."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cache_svc.core.index import IndexConfig, PartitionInfo, VectorIndex
from cache_svc.core.keys import exact_key
from cache_svc.core.local import LocalTier
from cache_svc.core.normalize import Normalization
from cache_svc.core.simhash import hamming, simhash64
from cache_svc.core.types import CacheQuery, Entry
from reprise.domain import Answer


def _entry(key: str, ns: str = "t", model: str = "m", ttl: float = 60.0) -> Entry:
    now = time.time()
    return Entry(key, ns, "chat", "text", Answer(reply="r"), model, "r1", now, now + ttl)


def test_local_tier_expires_entries_at_their_expiry() -> None:
    tier = LocalTier(10, max_staleness_s=60)
    tier.put(_entry("a", ttl=0.05))
    assert tier.get("a") is not None
    time.sleep(0.08)
    assert tier.get("a") is None


def test_local_tier_bounds_staleness_and_size() -> None:
    tier = LocalTier(2, max_staleness_s=0.05)
    tier.put(_entry("a"))
    time.sleep(0.08)
    assert tier.get("a") is None  # older than the staleness bound: re-read from Redis
    for k in "bcd":
        tier.put(_entry(k))
    assert len(tier) == 2 and tier.get("b") is None  # LRU evicted the oldest


def test_local_tier_drops_by_namespace_and_model() -> None:
    tier = LocalTier(10)
    tier.put(_entry("a", ns="x"))
    tier.put(_entry("b", ns="y", model="m2"))
    tier.put(_entry("c", ns="y"))
    tier.drop_namespace("x")
    tier.drop_model("m2", None)
    assert [k for k in "abc" if tier.get(k)] == ["c"]


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _key(i: int) -> str:
    return exact_key(CacheQuery("t", "chat", f"text {i}"), Normalization())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_search_remove_and_expiry(kind: str) -> None:
    rng = np.random.default_rng(0)
    vecs = _unit(rng, 50)
    idx = VectorIndex(16, IndexConfig(kind=kind))
    info = PartitionInfo("t", "m", "r", "chat")
    now = time.time()
    idx.add("p", info, [(_key(i), vecs[i], now + (0.0 if i == 7 else 60)) for i in range(50)])
    assert len(idx) == 50
    best = idx.search("p", vecs[3], 1, now)[0]
    assert best.key == _key(3) and best.similarity == pytest.approx(1.0, abs=1e-5)
    assert all(c.key != _key(7) for c in idx.search("p", vecs[7], 3, now + 1))  # expired: never returned
    idx.remove_keys([_key(3)])
    assert all(c.key != _key(3) for c in idx.search("p", vecs[3], 3, now))
    assert idx.search("other-partition", vecs[3], 3, now) == []
    # Re-adding a removed key works (HNSW revives its tombstone instead of duplicating it).
    idx.add("p", info, [(_key(3), vecs[3], now + 60)])
    assert idx.search("p", vecs[3], 1, now)[0].key == _key(3)


def test_hnsw_rebuilds_when_tombstones_pile_up() -> None:
    rng = np.random.default_rng(1)
    vecs = _unit(rng, 40)
    idx = VectorIndex(16, IndexConfig(kind="hnsw", rebuild_fraction=0.2))
    now = time.time()
    idx.add("p", PartitionInfo("t", "m", "r", "chat"), [(_key(i), vecs[i], now + 60) for i in range(40)])
    idx.remove_keys([_key(i) for i in range(10)])
    assert len(idx) == 30
    assert idx.search("p", vecs[20], 1, now)[0].key == _key(20)


def test_index_drops_partitions_by_namespace_and_model() -> None:
    rng = np.random.default_rng(2)
    v = _unit(rng, 3)
    idx = VectorIndex(16)
    now = time.time()
    idx.add("p1", PartitionInfo("a", "m1", "r", "chat"), [(_key(0), v[0], now + 60)])
    idx.add("p2", PartitionInfo("b", "m1", "r", "chat"), [(_key(1), v[1], now + 60)])
    idx.add("p3", PartitionInfo("b", "m2", "r", "chat"), [(_key(2), v[2], now + 60)])
    assert idx.drop_where(namespace="a") == 1
    assert idx.drop_where(model_id="m2") == 1
    assert len(idx) == 1


def test_simhash_near_duplicates_are_close() -> None:
    a = simhash64("how do i reset my password on the website")
    b = simhash64("how do i reset the password on the website")
    c = simhash64("the weather in tokyo is sunny and warm today")
    assert hamming(a, b) < hamming(a, c)
