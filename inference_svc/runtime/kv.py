"""KV storage: per-sequence buffers and the token-prefix index that lets any request reuse them.

A conversation's next turn starts with every token of the previous turn
(system prompt, history, the reply just generated), so the KV computed for
that turn is exactly the KV the next one needs for its prefix. The index maps
token prefixes to computed KV: a new request finds the longest prefix already
computed, copies that KV into its own buffer (one memcpy, ~1 ms per 1,000
tokens, versus ~1 s to recompute) and computes only the rest.

Lookup hashes the prompt in blocks of ``block`` tokens, each hash chaining
the previous one, so the deepest matching block boundary is found in
O(prompt length); the match is then verified and extended token by token.
Entries are bounded by a byte budget with least-recently-used eviction; an
entry whose tokens are a prefix of a newly inserted one is dropped (the new
one covers it), so a long conversation holds one entry, not one per turn.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class KVBuffer:
    """Keys and values of one sequence: ``[layers, kv_heads, capacity, head_dim]``; ``length`` are filled."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def allocate(cls, layers: int, kv_heads: int, capacity: int, head_dim: int, dtype: torch.dtype) -> KVBuffer:
        shape = (layers, kv_heads, capacity, head_dim)
        return cls(torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def copy_prefix(self, source: KVBuffer, n: int) -> None:
        """Make this buffer hold the first ``n`` tokens of ``source``."""
        self.k[:, :, :n] = source.k[:, :, :n]
        self.v[:, :, :n] = source.v[:, :, :n]
        self.length = n

    def compact(self) -> KVBuffer:
        """This buffer, or a right-sized copy when most of its capacity is unused."""
        if self.capacity <= self.length * 5 // 4 + 16:
            return self
        k = self.k[:, :, : self.length].clone()
        v = self.v[:, :, : self.length].clone()
        return KVBuffer(k, v, self.length)


@dataclass(eq=False)
class _Entry:
    id: int
    tokens: tuple[int, ...]
    kv: KVBuffer
    pinned: bool
    hashes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PrefixMatch:
    """The longest computed prefix of a prompt: copy ``kv[:length]`` before the next index call."""

    kv: KVBuffer | None
    length: int


@dataclass(frozen=True)
class IndexStats:
    entries: int
    bytes: int
    budget_bytes: int
    hits: int
    misses: int
    evictions: int


def _block_hashes(tokens: Sequence[int], block: int) -> list[int]:
    out, h = [], 0
    for start in range(0, len(tokens) - block + 1, block):
        h = hash((h, tuple(tokens[start : start + block])))
        out.append(h)
    return out


class PrefixIndex:
    """Longest-token-prefix lookup of computed KV, bounded by ``budget_bytes`` with LRU eviction.

    Not thread-safe: the model worker thread owns it.
    """

    def __init__(self, budget_bytes: int, block: int = 16) -> None:
        self.budget_bytes = budget_bytes
        self.block = block
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # LRU order, most recent last
        self._by_hash: dict[int, dict[int, _Entry]] = {}
        self._ids = itertools.count()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def stats(self) -> IndexStats:
        return IndexStats(len(self._entries), self._bytes, self.budget_bytes, self._hits, self._misses, self._evictions)

    def _best(self, tokens: Sequence[int]) -> tuple[_Entry | None, int]:
        hashes = _block_hashes(tokens, self.block)
        depth, candidates = 0, None
        for i, h in enumerate(hashes):
            found = self._by_hash.get(h)
            if not found:
                break  # every entry registers all its boundaries: nothing deeper can match
            depth, candidates = i + 1, found
        if not candidates:
            return None, 0
        best, best_len = None, 0
        for entry in candidates.values():
            n = _common_prefix(entry.tokens, tokens)
            if n >= depth * self.block and n > best_len:  # a hash collision fails the first test
                best, best_len = entry, n
        return best, best_len

    def lookup(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest prefix of ``tokens`` whose KV is stored (length 0 when none)."""
        entry, n = self._best(tokens)
        if entry is None:
            self._misses += 1
            return PrefixMatch(None, 0)
        self._hits += 1
        self._entries.move_to_end(entry.id)
        return PrefixMatch(entry.kv, n)

    def insert(self, tokens: Sequence[int], kv: KVBuffer, *, pinned: bool = False) -> bool:
        """Store ``kv`` (holding exactly ``tokens``); the index owns it afterwards. False when it cannot fit."""
        if kv.length != len(tokens):
            raise ValueError(f"KV holds {kv.length} tokens, {len(tokens)} given")
        if len(tokens) < self.block:
            return False
        kv = kv.compact()
        covered, n = self._best(tokens)
        if covered is not None and n == len(covered.tokens) and not covered.pinned:
            self._remove(covered)  # its tokens are a prefix of ours: the new entry serves every lookup it served
        if not pinned and kv.nbytes > self.budget_bytes:
            return False
        self._evict_until(self.budget_bytes - kv.nbytes)
        if not pinned and self._bytes + kv.nbytes > self.budget_bytes:
            return False  # only pinned entries are left and they fill the budget
        entry = _Entry(next(self._ids), tuple(tokens), kv, pinned, _block_hashes(tokens, self.block))
        self._entries[entry.id] = entry
        for h in entry.hashes:
            self._by_hash.setdefault(h, {})[entry.id] = entry
        self._bytes += kv.nbytes
        return True

    def _evict_until(self, target_bytes: int) -> None:
        for entry in list(self._entries.values()):
            if self._bytes <= target_bytes:
                return
            if not entry.pinned:
                self._remove(entry)
                self._evictions += 1

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.id]
        for h in entry.hashes:
            bucket = self._by_hash.get(h)
            if bucket is not None:
                bucket.pop(entry.id, None)
                if not bucket:
                    del self._by_hash[h]
        self._bytes -= entry.kv.nbytes

    def clear(self) -> None:
        for entry in list(self._entries.values()):
            if not entry.pinned:
                self._remove(entry)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    ta, tb = torch.as_tensor(a[:n]), torch.as_tensor(b[:n])
    diff = (ta != tb).nonzero()
    return int(diff[0]) if diff.numel() else n
