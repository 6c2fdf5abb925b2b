"""Domain types of the gateway."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from reprise.domain import Answer, Decoding, Finish, SentimentResult, Turn, Usage

TASK_SENTIMENT = "sentiment"
TASK_CHAT = "chat"


class CacheStatus(str, enum.Enum):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class CacheInfo:
    status: CacheStatus
    similarity: float = 0.0
    matched_text: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-request cache policy (see CachePolicy in gateway.proto)."""

    no_cache: bool = False
    no_store: bool = False
    exact_only: bool | None = None
    min_similarity: float | None = None
    ttl_s: int | None = None
    max_age_s: int | None = None


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    model_id: str
    revision: str


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """What the gateway asks the cache about."""

    namespace: str
    task: str
    text: str
    model: ModelIdentity
    system_prompt: str = ""
    history: tuple[Turn, ...] = ()
    decoding: Decoding = field(default_factory=Decoding)


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: Answer
    info: CacheInfo


@dataclass(frozen=True, slots=True)
class Timings:
    total_ms: float = 0.0
    cache_ms: float = 0.0
    inference_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ClassifyOutcome:
    result: SentimentResult
    cache: CacheInfo
    usage: Usage
    timings: Timings


@dataclass(frozen=True, slots=True)
class ChatOutcome:
    reply: str
    finish: Finish | None
    cache: CacheInfo
    usage: Usage
    timings: Timings


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """One piece of a streamed reply. The first carries ``cache``; the last ``finish``, ``usage``, ``timings``."""

    delta: str
    cache: CacheInfo | None = None
    finish: Finish | None = None
    usage: Usage | None = None
    timings: Timings | None = None


@dataclass(frozen=True, slots=True)
class InferenceChunk:
    delta: str
    finish: Finish | None = None
    usage: Usage | None = None
