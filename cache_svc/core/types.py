"""Domain types of the cache service."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from reprise.domain import Answer, Decoding, InvalidationKind, Turn


class Tier(str, enum.Enum):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass(frozen=True, slots=True)
class CacheQuery:
    """Everything that decides whether two requests have the same answer."""

    namespace: str
    task: str
    text: str
    model_id: str = ""
    model_revision: str = ""
    system_prompt: str = ""
    history: tuple[Turn, ...] = ()
    decoding: Decoding = field(default_factory=Decoding)
    #: Digests of the images' decoded pixels (see keys.image_digest), not raw bytes.
    image_digests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    namespace: str
    task: str
    #: The original request text (served as the "matched text" of a semantic hit).
    text: str
    answer: Answer
    model_id: str
    model_revision: str
    #: Unix seconds.
    created_at: float
    expires_at: float
    #: Hash of everything in the key except the text (see keys.partition_key): a semantic
    #: candidate must share it with the query, so only the wording may differ.
    partition: str = ""
    #: 64-bit SimHash of the normalized text (see simhash.py), for cheap near-duplicate checks.
    simhash: int = 0
    #: Whether the entry's embedding is in Redis and in the semantic indexes.
    semantic: bool = False


@dataclass(frozen=True, slots=True)
class LookupOptions:
    exact_only: bool = False
    min_similarity: float | None = None
    max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class LookupResult:
    tier: Tier
    key: str
    similarity: float = 0.0
    entry: Entry | None = None
    rejected_reason: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stats:
    entries: int
    entries_by_namespace: dict[str, int]
    exact_hits: int
    semantic_hits: int
    misses: int
    guard_rejections: int
    indexed_vectors: int
    local_entries: int
    redis_used_memory_bytes: int
    index_memory_bytes: int
    embedder: str


@dataclass(frozen=True, slots=True)
class Invalidation:
    """An explicit invalidation, as broadcast to every replica and every watcher.

    ``value`` is the key, the namespace or the model id; ``model_revision`` is
    set only for a model invalidation restricted to one revision.
    """

    kind: InvalidationKind
    value: str
    model_revision: str | None = None
