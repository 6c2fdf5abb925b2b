"""What the gateway needs from the world, as Protocols (gRPC adapters in gateway.clients,
Prometheus in gateway.metrics, fakes in the unit tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from gateway.core.types import (
    CacheRequest,
    InferenceChunk,
    Invalidation,
    LookupResult,
    ModelIdentity,
    Prompt,
    StoredEntry,
)
from reprise.domain import Answer, SentimentResult, Usage


class CacheError(Exception):
    """A cache call failed. ``code`` is the gRPC status name; ``counts_as_failure`` feeds the breaker."""

    #: Statuses that say "your request is wrong", not "the cache is sick".
    VERDICTS = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND"})

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def counts_as_failure(self) -> bool:
        return self.code not in self.VERDICTS


class CachePort(Protocol):
    async def lookup(
        self,
        request: CacheRequest,
        *,
        exact_only: bool,
        min_similarity: float | None,
        max_age_s: int | None,
        timeout_s: float,
    ) -> LookupResult:
        """Ask the cache. Raises :class:`CacheError` on errors, including timeouts (DEADLINE_EXCEEDED)."""

    async def store(
        self, request: CacheRequest, answer: Answer, *, ttl_s: int | None, exact_only: bool, timeout_s: float
    ) -> StoredEntry:
        """Write an answer back. Raises :class:`CacheError`."""

    def watch_invalidations(self, on_open: Callable[[], None]) -> AsyncIterator[Invalidation]:
        """The cache's invalidation events from now on. ``on_open`` is called once the
        subscription is in place. Raises :class:`CacheError` when the stream fails or ends."""

    async def entries(self, namespace: str, timeout_s: float) -> int:
        """How many entries the namespace has. Raises :class:`CacheError`."""


class InferencePort(Protocol):
    async def classify(self, text: str, timeout_s: float | None) -> tuple[SentimentResult, Usage]: ...

    def chat_stream(self, prompt: Prompt, timeout_s: float | None) -> AsyncIterator[InferenceChunk]:
        """The reply to the prompt's new message (showing its pictures), piece by piece."""
        ...

    async def model_identity(self) -> ModelIdentity: ...


class Observer(Protocol):
    """Where the flow reports events (Prometheus in production). Levels (in flight, breaker
    state, hot entries) are read from the Gateway when scraped, not pushed per request."""

    def request(self, task: str, status: str, hot: bool, seconds: float) -> None: ...

    def lookup(self, result: str, seconds: float) -> None:
        """``result``: exact, semantic, miss, hot, error, timeout, rejected, skipped."""

    def store(self, result: str) -> None:
        """``result``: ok, error."""

    def breaker(self, state: str) -> None: ...

    def coalesced(self, task: str) -> None: ...

    def model_call(self, task: str, seconds: float) -> None: ...

    def invalidation(self, kind: str, removed: int) -> None: ...


class NullObserver:
    """Reports nowhere (unit tests, embedding the flow elsewhere)."""

    def request(self, task: str, status: str, hot: bool, seconds: float) -> None:
        pass

    def lookup(self, result: str, seconds: float) -> None:
        pass

    def store(self, result: str) -> None:
        pass

    def breaker(self, state: str) -> None:
        pass

    def coalesced(self, task: str) -> None:
        pass

    def model_call(self, task: str, seconds: float) -> None:
        pass

    def invalidation(self, kind: str, removed: int) -> None:
        pass
