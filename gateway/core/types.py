"""Domain types of the gateway (no grpc, no protobuf)."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, replace

from reprise.domain import Answer, Decoding, Finish, InvalidationKind, SentimentResult, Turn, Usage

TASK_SENTIMENT = "sentiment"
TASK_CHAT = "chat"
#: Every task the gateway knows; the order is the order Analyze reports them in.
TASKS = (TASK_SENTIMENT, TASK_CHAT)
#: The ``tenant`` of an operator's Stats: totals over every tenant of the replica.
ALL_TENANTS = "*"


class CacheStatus(str, enum.Enum):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Where an answer came from, as reported to the caller."""

    status: CacheStatus
    similarity: float = 0.0
    matched_text: str = ""
    #: The cache's exact key (served entry on a hit, this request's on a miss); "" when not asked.
    key: str = ""
    #: Served from the gateway's in-process hot-key layer.
    hot: bool = False
    #: Why the cache was bypassed.
    reason: str = ""
    #: The answer is (or, for a stream, will be once complete) written back.
    store: bool = False
    #: Computed for an identical request already in flight.
    coalesced: bool = False
    #: Why the cache's best semantic candidate was not served.
    rejected_reason: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-request cache policy as the caller sent it (see CachePolicy in gateway.proto).

    ``None`` means "the task's default" (see :mod:`gateway.core.policy`).
    """

    no_cache: bool = False
    no_store: bool = False
    exact_only: bool | None = None
    min_similarity: float | None = None
    ttl_s: int | None = None
    max_age_s: int | None = None
    cache_sampled: bool | None = None


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    model_id: str
    revision: str
    #: Whether the model takes images; None when inference did not say. Not part of equality: the
    #: revision already tells two models apart, and this identity is part of every cache key.
    takes_images: bool | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the caller asks of the model: the one value a request carries from the servicer to inference.

    Built once at the edge (:func:`gateway.wire.prompt_from_pb`) and passed down whole:
    validated (:class:`~gateway.core.limits.Validator`), part of the cache's question
    (:class:`CacheRequest`), routed (:func:`~gateway.core.ring.conversation_key`) and
    sent to inference as it came. A Classify prompt is its text alone.
    """

    #: The new message.
    text: str
    #: The conversation before it, oldest turn first.
    history: tuple[Turn, ...] = ()
    #: None: the model's default. Sent to inference as given; not part of equality, since an empty
    #: one means the default too (inference reads it so, and the cache keys it so): ``system_key`` is.
    system_prompt: str | None = field(default=None, compare=False)
    decoding: Decoding = field(default_factory=Decoding)
    #: Encoded pictures of the new message, sent to the cache (which keys their decoded pixels) and to
    #: inference. Not part of equality: :attr:`image_ids` stands for them, so a request kept as a
    #: hot-layer key (:meth:`without_image_bytes`) need not hold megabytes of pictures.
    images: tuple[bytes, ...] = field(default=(), compare=False, repr=False)
    #: SHA-256 of each picture's bytes, in order (filled in from ``images`` when not given).
    image_ids: tuple[str, ...] = ()
    #: The system prompt as the cache keys it ("" for the default).
    system_key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "system_key", self.system_prompt or "")
        if self.images and not self.image_ids:
            object.__setattr__(self, "image_ids", tuple(hashlib.sha256(image).hexdigest() for image in self.images))

    def without_image_bytes(self) -> Prompt:
        """The same prompt (equal, same hash) without the pictures' bytes: for keys kept long."""
        return replace(self, images=()) if self.images else self


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """What the gateway asks the cache about: one task's prompt, in a namespace, for a model.

    Frozen and hashable on purpose: the object itself is the hot-key layer's
    key and the singleflight key of requests the cache never keyed. It holds
    the raw request, so equal objects always have equal cache keys.
    """

    namespace: str
    task: str
    model: ModelIdentity
    prompt: Prompt

    def without_image_bytes(self) -> CacheRequest:
        """The same request (equal, same hash) without the pictures' bytes: for keys kept long."""
        return replace(self, prompt=self.prompt.without_image_bytes()) if self.prompt.images else self


@dataclass(frozen=True, slots=True)
class CachedEntry:
    """An answer the cache served, with what the hot-key layer needs to keep it coherent."""

    answer: Answer
    #: The cache's exact key of the entry.
    key: str
    #: Unix seconds; 0 when unknown.
    created_at: float = 0.0
    expires_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CacheHit:
    entry: CachedEntry
    info: CacheInfo


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The cache's answer to a lookup: a hit, or a miss that still names the request's exact key."""

    hit: CacheHit | None
    key: str
    rejected_reason: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """What a write-back produced (feeds the hot-key layer)."""

    key: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Timings:
    total_ms: float = 0.0
    cache_ms: float = 0.0
    inference_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)


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
class AnalyzeOutcome:
    """Either part is ``None`` when the caller did not ask for it."""

    sentiment: ClassifyOutcome | None
    chat: ChatOutcome | None


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


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One event of the cache's invalidation stream."""

    kind: InvalidationKind
    #: The key, the namespace, or the model id.
    value: str
    #: For MODEL events: one revision, or None for every revision.
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class TenantStats:
    requests: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    hot_hits: int = 0
    misses: int = 0
    bypassed: int = 0
    coalesced: int = 0
    model_calls: int = 0


@dataclass(frozen=True, slots=True)
class GatewayStats:
    tenant: str
    counters: TenantStats
    breaker_state: str
    hot_active: bool
    hot_entries: int
    in_flight: int
    model_in_flight: int
    cache_entries: int | None
    model: ModelIdentity | None
    rejected_overload: int
