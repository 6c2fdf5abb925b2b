"""The cache-first flow: ask the cache under a tight deadline, fall through to the model, store after."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.core.ports import CachePort, InferencePort
from gateway.core.types import (
    TASK_CHAT,
    TASK_SENTIMENT,
    CacheHit,
    CacheInfo,
    CacheRequest,
    CacheStatus,
    ChatDelta,
    ChatOutcome,
    ClassifyOutcome,
    ModelIdentity,
    Policy,
    Timings,
)
from reprise.domain import Answer, Decoding, Turn, Usage
from reprise.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    #: Budget for a cache lookup; past it the request is treated as a miss.
    cache_timeout_s: float = 0.03
    max_text_chars: int = 8_000
    #: Characters per message when replaying a cached reply as a stream.
    replay_chunk_chars: int = 16


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class Gateway:
    def __init__(self, cache: CachePort, inference: InferencePort, config: GatewayConfig = GatewayConfig()) -> None:
        self._cache = cache
        self._inference = inference
        self._config = config
        self._model: ModelIdentity | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Learn the model identity (part of every cache key); waits for inference to be up."""
        delay = 0.1
        while True:
            try:
                self._model = await self._inference.model_identity()
                log.info("serving model %s revision %s", self._model.model_id, self._model.revision)
                return
            except Unavailable as exc:
                log.warning("waiting for inference: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """Let pending cache writes finish (they are short), so nothing computed is lost."""
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    def _check_text(self, text: str) -> None:
        if not text.strip():
            raise InvalidArgument("text", "must not be empty")
        if len(text) > self._config.max_text_chars:
            raise InvalidArgument("text", f"is {len(text)} characters; the limit is {self._config.max_text_chars}")

    def _request(self, namespace: str, task: str, text: str, **kw: object) -> CacheRequest:
        if self._model is None:
            raise Unavailable("gateway is starting: model identity unknown")
        return CacheRequest(namespace=namespace, task=task, text=text, model=self._model, **kw)  # type: ignore[arg-type]

    async def _lookup(self, request: CacheRequest, policy: Policy) -> tuple[CacheHit | None, CacheInfo]:
        if policy.no_cache:
            return None, CacheInfo(CacheStatus.BYPASS)
        try:
            hit = await self._cache.lookup(request, policy, self._config.cache_timeout_s)
        except Exception as exc:  # a broken cache never breaks a request
            log.warning("cache lookup failed, computing instead: %s", exc)
            return None, CacheInfo(CacheStatus.BYPASS)
        if hit is None:
            return None, CacheInfo(CacheStatus.MISS)
        return hit, hit.info

    def _store_later(self, request: CacheRequest, answer: Answer, policy: Policy) -> None:
        if policy.no_store:
            return

        async def store() -> None:
            try:
                await self._cache.store(request, answer, policy)
            except Exception as exc:
                log.warning("cache store failed: %s", exc)

        task = asyncio.ensure_future(store())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def classify(self, namespace: str, text: str, policy: Policy, timeout_s: float | None = None) -> ClassifyOutcome:
        start = time.perf_counter()
        self._check_text(text)
        request = self._request(namespace, TASK_SENTIMENT, text)
        hit, info = await self._lookup(request, policy)
        cache_ms = _ms(start)
        if hit is not None and hit.answer.sentiment is not None:
            return ClassifyOutcome(hit.answer.sentiment, info, hit.answer.usage, Timings(_ms(start), cache_ms, 0.0))
        t = time.perf_counter()
        result, usage = await self._inference.classify(text, timeout_s)
        inference_ms = _ms(t)
        self._store_later(request, Answer(sentiment=result, usage=usage), policy)
        return ClassifyOutcome(result, info, usage, Timings(_ms(start), cache_ms, inference_ms))

    async def chat_stream(
        self,
        namespace: str,
        history: tuple[Turn, ...],
        text: str,
        system_prompt: str | None,
        decoding: Decoding,
        policy: Policy,
        timeout_s: float | None = None,
    ) -> AsyncIterator[ChatDelta]:
        start = time.perf_counter()
        self._check_text(text)
        request = self._request(
            namespace, TASK_CHAT, text, system_prompt=system_prompt or "", history=history, decoding=decoding
        )
        hit, info = await self._lookup(request, policy)
        cache_ms = _ms(start)
        if hit is not None and hit.answer.reply is not None:
            reply, n = hit.answer.reply, self._config.replay_chunk_chars
            pieces = [reply[i : i + n] for i in range(0, len(reply), n)] or [""]
            for i, piece in enumerate(pieces[:-1]):
                yield ChatDelta(piece, cache=info if i == 0 else None)
            yield ChatDelta(
                pieces[-1],
                cache=info if len(pieces) == 1 else None,
                finish=hit.answer.finish,
                usage=hit.answer.usage,
                timings=Timings(_ms(start), cache_ms, 0.0),
            )
            return
        t = time.perf_counter()
        parts: list[str] = []
        first = True
        async for chunk in self._inference.chat_stream(history, text, system_prompt, decoding, timeout_s):
            parts.append(chunk.delta)
            if chunk.finish is None:
                yield ChatDelta(chunk.delta, cache=info if first else None)
                first = False
                continue
            usage = chunk.usage or Usage()
            # Only a complete, successful reply is stored.
            self._store_later(request, Answer(reply="".join(parts), finish=chunk.finish, usage=usage), policy)
            yield ChatDelta(
                chunk.delta,
                cache=info if first else None,
                finish=chunk.finish,
                usage=usage,
                timings=Timings(_ms(start), cache_ms, _ms(t)),
            )

    async def chat(
        self,
        namespace: str,
        history: tuple[Turn, ...],
        text: str,
        system_prompt: str | None,
        decoding: Decoding,
        policy: Policy,
        timeout_s: float | None = None,
    ) -> ChatOutcome:
        parts: list[str] = []
        info = None
        async for d in self.chat_stream(namespace, history, text, system_prompt, decoding, policy, timeout_s):
            parts.append(d.delta)
            info = d.cache or info
            last = d
        assert info is not None and last.timings is not None
        return ChatOutcome("".join(parts), last.finish, info, last.usage or Usage(), last.timings)

    async def analyze(
        self, namespace: str, text: str, decoding: Decoding, policy: Policy, timeout_s: float | None = None
    ) -> tuple[ClassifyOutcome, ChatOutcome]:
        sentiment, reply = await asyncio.gather(
            self.classify(namespace, text, policy, timeout_s),
            self.chat(namespace, (), text, None, decoding, policy, timeout_s),
        )
        return sentiment, reply
