"""What the gateway needs from the services behind it, as Protocols (gRPC adapters in gateway.clients)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.core.types import CacheHit, CacheRequest, InferenceChunk, ModelIdentity, Policy
from reprise.domain import Answer, Decoding, SentimentResult, Turn, Usage


class CachePort(Protocol):
    async def lookup(self, request: CacheRequest, policy: Policy, timeout_s: float) -> CacheHit | None:
        """The cached answer, or None on a miss. Raises on errors and timeouts."""

    async def store(self, request: CacheRequest, answer: Answer, policy: Policy) -> None: ...


class InferencePort(Protocol):
    async def classify(self, text: str, timeout_s: float | None) -> tuple[SentimentResult, Usage]: ...

    def chat_stream(
        self,
        history: tuple[Turn, ...],
        text: str,
        system_prompt: str | None,
        decoding: Decoding,
        timeout_s: float | None,
    ) -> AsyncIterator[InferenceChunk]: ...

    async def model_identity(self) -> ModelIdentity: ...
