"""The inference service's domain API: validation, readiness, batching and the worker hand-off.

The servicer translates protobuf to these calls; nothing here knows about gRPC.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from inference_svc.core.batcher import ClassifyBatcher
from inference_svc.core.engine import ChatChunk, Classification, Engine, ModelDescription
from inference_svc.core.worker import ModelWorker
from reprise.domain import Decoding, SentimentResult, Turn, Usage
from reprise.errors import InvalidArgument, Unavailable
from reprise.text import check_turns, check_visible


@dataclass(frozen=True)
class Limits:
    max_text_chars: int = 32_000
    max_history_turns: int = 64
    max_new_tokens: int = 1024
    max_stop_strings: int = 8
    max_stop_chars: int = 64


@dataclass(frozen=True)
class Batching:
    max_batch: int = 16
    max_wait_ms: float = 3.0
    max_pending: int = 256


@dataclass(frozen=True)
class Classified:
    result: SentimentResult
    usage: Usage
    queue_ms: float
    compute_ms: float
    batch_size: int = 1


class InferenceService:
    def __init__(
        self, engine: Engine, worker: ModelWorker, limits: Limits = Limits(), batching: Batching = Batching()
    ) -> None:
        self._engine = engine
        self._worker = worker
        self._limits = limits
        self._batcher: ClassifyBatcher[Classification] = ClassifyBatcher(
            worker, engine.classify_batch, batching.max_batch, batching.max_wait_ms / 1000, batching.max_pending
        )
        self._ready = False

    async def start(self) -> None:
        """Load and warm the model on the worker thread; the event loop stays free meanwhile."""
        self._worker.start()
        await self._worker.call(lambda _: self._engine.load())
        await self._worker.call(lambda _: self._engine.warm_up())
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        self._worker.close(timeout=30)

    @property
    def queue_depth(self) -> int:
        return self._worker.depth + self._batcher.pending

    def _check_ready(self) -> None:
        if not self._ready:
            raise Unavailable("model is not loaded yet")

    def _check_text(self, text: str) -> None:
        check_visible("text", text)
        if len(text) > self._limits.max_text_chars:
            raise InvalidArgument("text", f"is {len(text)} characters; the limit is {self._limits.max_text_chars}")

    def _check_chat(self, history: tuple[Turn, ...], text: str, decoding: Decoding) -> None:
        self._check_text(text)
        lim = self._limits
        if len(history) > lim.max_history_turns:
            raise InvalidArgument("history", f"has {len(history)} turns; the limit is {lim.max_history_turns}")
        check_turns(history)
        if decoding.temperature is not None and not 0.0 <= decoding.temperature <= 2.0:
            raise InvalidArgument("decoding.temperature", "must be in [0, 2]")
        if decoding.top_p is not None and not 0.0 < decoding.top_p <= 1.0:
            raise InvalidArgument("decoding.top_p", "must be in (0, 1]")
        if decoding.max_new_tokens is not None and not 1 <= decoding.max_new_tokens <= lim.max_new_tokens:
            raise InvalidArgument("decoding.max_new_tokens", f"must be in [1, {lim.max_new_tokens}]")
        if len(decoding.stop) > lim.max_stop_strings:
            raise InvalidArgument("decoding.stop", f"has {len(decoding.stop)} strings; the limit is {lim.max_stop_strings}")
        for i, stop in enumerate(decoding.stop):
            if not stop or len(stop) > lim.max_stop_chars:
                raise InvalidArgument(f"decoding.stop[{i}]", f"must be 1 to {lim.max_stop_chars} characters")

    async def classify(self, text: str) -> Classified:
        self._check_ready()
        self._check_text(text)
        out = await self._batcher.classify(text)
        c = out.value
        return Classified(c.result, c.usage, out.queue_ms, out.compute_ms, out.batch_size)

    async def chat_stream(
        self, history: tuple[Turn, ...], text: str, system_prompt: str | None, decoding: Decoding
    ) -> AsyncIterator[tuple[ChatChunk, float]]:
        """Yields (chunk, queue_ms); queue_ms is the same on every chunk."""
        self._check_ready()
        self._check_chat(history, text, decoding)
        if system_prompt is not None and len(system_prompt) > self._limits.max_text_chars:
            raise InvalidArgument("system_prompt", f"is {len(system_prompt)} characters; the limit is {self._limits.max_text_chars}")
        queued = time.perf_counter()
        started: list[float] = []

        def run(cancelled):  # type: ignore[no-untyped-def]
            started.append(time.perf_counter())
            yield from self._engine.chat(history, text, system_prompt, decoding, cancelled)

        async for chunk in self._worker.stream(run):
            yield chunk, (started[0] - queued) * 1000

    async def describe(self) -> ModelDescription:
        self._check_ready()
        return self._engine.describe()
