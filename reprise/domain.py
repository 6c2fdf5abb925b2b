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


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Decoding:
    """Decoding parameters; ``None`` means the serving default."""

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

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
