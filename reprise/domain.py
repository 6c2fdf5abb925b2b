"""Domain types shared by the services; core code uses these, never ``*_pb2`` messages.

Conversions to and from protobuf live in :mod:`reprise.convert`, used only by servicers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(str, enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"


class Label(str, enum.Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class Finish(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"


class InvalidationKind(str, enum.Enum):
    """What an invalidation names: one key, a namespace, or a model (one revision or all).

    Shared because the cache broadcasts these events and the gateway's hot layer
    applies them; ``gateway.core.types`` and ``cache_svc.core.types`` re-export it.
    """

    KEY = "key"
    NAMESPACE = "namespace"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Decoding:
    """Decoding parameters; ``None`` means the serving default (the model's generation config, else off)."""

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: Sample among the ``top_k`` likeliest tokens only; 0 = no limit.
    top_k: int | None = None
    #: Drop tokens less likely than ``min_p`` times the likeliest one; 0 = off.
    min_p: float | None = None
    #: Divide the (positive) logits of tokens already in the conversation by this; 1 = off. Greedy too.
    repetition_penalty: float | None = None

    @property
    def greedy(self) -> bool:
        return not self.temperature


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.cached_tokens + other.cached_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class SentimentResult:
    label: Label
    #: Probability of ``label``.
    probability: float


@dataclass(frozen=True, slots=True)
class Answer:
    """What a task produced: a sentiment, a reply, or both."""

    sentiment: SentimentResult | None = None
    reply: str | None = None
    finish: Finish | None = None
    usage: Usage = field(default_factory=Usage)
