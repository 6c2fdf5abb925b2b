"""The token-prefix KV index: longest match, verification, LRU under a byte budget."""

from __future__ import annotations

import torch

from inference_svc.runtime.kv import KVBuffer, PrefixIndex


def _kv(tokens: list[int], capacity: int | None = None) -> KVBuffer:
    """A 1-layer buffer whose K holds the token ids, so a test can see which KV it got."""
    n = len(tokens)
    kv = KVBuffer.allocate(1, 1, capacity or n, 1, torch.float32)
    kv.k[0, 0, :n, 0] = torch.tensor(tokens, dtype=torch.float32)
    kv.v[0, 0, :n, 0] = -torch.tensor(tokens, dtype=torch.float32)
    kv.length = n
    return kv


def test_longest_prefix_is_found_and_extended_past_block_boundary() -> None:
    index = PrefixIndex(budget_bytes=1 << 20, block=4)
    a = list(range(10))
    b = list(range(6)) + [100, 101, 102, 103]
    assert index.insert(a, _kv(a)) and index.insert(b, _kv(b))
    match = index.lookup(list(range(9)) + [55, 56])
    assert match.length == 9  # 2 whole blocks by hash, then token by token
    assert match.kv is not None and match.kv.k[0, 0, :9, 0].tolist() == list(range(9))
    match = index.lookup(list(range(6)) + [100, 101, 7])
    assert match.length == 8 and match.kv.k[0, 0, 6, 0].item() == 100


def test_no_match_below_one_block_and_stats_count() -> None:
    index = PrefixIndex(budget_bytes=1 << 20, block=4)
    index.insert(list(range(8)), _kv(list(range(8))))
    assert index.lookup([0, 1, 2, 9, 9]).length == 0
    assert index.lookup([7, 7, 7, 7, 7]).length == 0
    stats = index.stats()
    assert (stats.hits, stats.misses, stats.entries) == (0, 2, 1)


def test_hash_collision_is_not_trusted() -> None:
    index = PrefixIndex(budget_bytes=1 << 20, block=4)
    index.insert(list(range(8)), _kv(list(range(8))))
    # Forge a colliding bucket: a different entry registered under the real hashes.
    entry = next(iter(index._entries.values()))
    entry.tokens = (9, 9, 9, 9, 9, 9, 9, 9)
    assert index.lookup(list(range(8))).length == 0


def test_lru_eviction_keeps_budget_and_recently_used() -> None:
    per_entry = _kv(list(range(8))).nbytes
    index = PrefixIndex(budget_bytes=2 * per_entry, block=4)
    first, second, third = ([i] * 8 for i in (1, 2, 3))
    index.insert(first, _kv(first))
    index.insert(second, _kv(second))
    assert index.lookup(first).length == 8  # touch: second is now least recently used
    index.insert(third, _kv(third))
    assert index.stats().bytes <= 2 * per_entry and index.stats().evictions == 1
    assert index.lookup(second).length == 0
    assert index.lookup(first).length == 8 and index.lookup(third).length == 8


def test_pinned_entries_are_never_evicted() -> None:
    per_entry = _kv(list(range(8))).nbytes
    index = PrefixIndex(budget_bytes=per_entry, block=4)
    pinned = [7] * 8
    index.insert(pinned, _kv(pinned), pinned=True)
    assert not index.insert([1] * 8, _kv([1] * 8))  # the budget is full of pinned KV
    assert index.lookup(pinned).length == 8
    index.clear()
    assert index.lookup(pinned).length == 8


def test_extension_supersedes_its_prefix_entry() -> None:
    index = PrefixIndex(budget_bytes=1 << 20, block=4)
    turn1 = list(range(8))
    turn2 = turn1 + [50, 51, 52, 53, 54]
    index.insert(turn1, _kv(turn1))
    index.insert(turn2, _kv(turn2))
    assert index.stats().entries == 1
    assert index.lookup(turn2).length == len(turn2)


def test_oversized_buffers_are_compacted_on_insert() -> None:
    index = PrefixIndex(budget_bytes=1 << 20, block=4)
    tokens = list(range(8))
    index.insert(tokens, _kv(tokens, capacity=1000))
    assert index.stats().bytes == _kv(tokens).nbytes


def test_insert_rejects_length_mismatch() -> None:
    index = PrefixIndex(budget_bytes=1 << 20, block=4)
    try:
        index.insert([1, 2, 3, 4, 5], _kv([1, 2, 3, 4]))
    except ValueError as exc:
        assert "4 tokens" in str(exc)
    else:
        raise AssertionError("expected ValueError")
