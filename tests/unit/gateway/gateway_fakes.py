"""In-memory stand-ins for the gateway's ports (unit tests only: no network, no model)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable

from gateway.core.ports import CacheError
from gateway.core.types import (
    CachedEntry,
    CacheHit,
    CacheInfo,
    CacheRequest,
    CacheStatus,
    InferenceChunk,
    Invalidation,
    InvalidationKind,
    LookupResult,
    ModelIdentity,
    Prompt,
    StoredEntry,
)
from reprise.domain import Answer, Finish, Label, SentimentResult, Usage
from reprise.errors import ResourceExhausted, Unavailable

MODEL = ModelIdentity("tiny", "r1")


def key_of(request: CacheRequest) -> str:
    """Stand-in for the cache's exact key: case and outer whitespace do not matter."""
    prompt = request.prompt
    raw = repr((request.namespace, request.task, prompt.text.strip().lower(), prompt.system_key,
                prompt.history, prompt.decoding, request.model, prompt.image_ids))
    return hashlib.sha256(raw.encode()).hexdigest()


class FakeCache:
    """A dict with the cache's contract; ``fail`` makes calls raise, ``delay_s`` slows lookups."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[CacheRequest, CachedEntry]] = {}
        self.lookups = 0
        self.stores = 0
        self.fail: str | None = None  # a gRPC status name to raise
        self.delay_s = 0.0
        self.watchable = True
        self._watchers: list[asyncio.Queue[Invalidation | None]] = []

    async def lookup(
        self, request: CacheRequest, *, exact_only: bool, min_similarity: float | None, max_age_s: int | None, timeout_s: float
    ) -> LookupResult:
        self.lookups += 1
        if self.delay_s:
            try:
                await asyncio.wait_for(asyncio.sleep(self.delay_s), timeout_s)
            except TimeoutError:
                raise CacheError("DEADLINE_EXCEEDED", "deadline exceeded") from None
        if self.fail:
            raise CacheError(self.fail, "injected")
        key = key_of(request)
        found = self.data.get(key)
        if found is None or (max_age_s is not None and time.time() - found[1].created_at > max_age_s):
            return LookupResult(None, key)
        entry = found[1]
        return LookupResult(CacheHit(entry, CacheInfo(CacheStatus.EXACT, 1.0, key=key)), key)

    async def store(
        self, request: CacheRequest, answer: Answer, *, ttl_s: int | None, exact_only: bool, timeout_s: float
    ) -> StoredEntry:
        self.stores += 1
        if self.fail:
            raise CacheError(self.fail, "injected")
        key = key_of(request)
        now = time.time()
        entry = CachedEntry(answer, key, now, now + (ttl_s or 3600))
        self.data[key] = (request, entry)
        return StoredEntry(key, entry.expires_at)

    async def entries(self, namespace: str, timeout_s: float) -> int:
        if self.fail:
            raise CacheError(self.fail, "injected")
        return sum(1 for r, _ in self.data.values() if r.namespace == namespace)

    def invalidate_key(self, key: str) -> None:
        self.data.pop(key, None)
        self.publish(Invalidation(InvalidationKind.KEY, key))

    def publish(self, event: Invalidation | None) -> None:
        for q in self._watchers:
            q.put_nowait(event)

    async def watch_invalidations(self, on_open: Callable[[], None]) -> AsyncIterator[Invalidation]:
        if not self.watchable:
            raise CacheError("UNIMPLEMENTED", "no stream")
        q: asyncio.Queue[Invalidation | None] = asyncio.Queue()
        self._watchers.append(q)
        try:
            on_open()
            while True:
                event = await q.get()
                if event is None:
                    raise CacheError("UNAVAILABLE", "stream broke")
                yield event
        finally:
            self._watchers.remove(q)


class FakeInference:
    """Counts calls; ``gate`` (when set) holds every call until it is set; ``fail`` raises."""

    def __init__(self, reply: str = "a cached reply that is long enough to need several pieces") -> None:
        self.reply = reply
        self.classify_calls = 0
        self.chat_calls = 0
        self.gate: asyncio.Event | None = None
        self.fail_after: int | None = None  # chat: raise after this many pieces
        self.refuse = False  # classify: RESOURCE_EXHAUSTED, as inference's admission answers
        self.timeouts: list[float | None] = []
        self.images: list[tuple[bytes, ...]] = []  # chat: the pictures each call was given

    async def classify(self, text: str, timeout_s: float | None) -> tuple[SentimentResult, Usage]:
        self.classify_calls += 1
        self.timeouts.append(timeout_s)
        if self.refuse:
            raise ResourceExhausted("inference: expected to finish in 30.0 s but the deadline is in 20.0 s")
        if self.gate is not None:
            await self.gate.wait()
        label = Label.NEGATIVE if "bad" in text else Label.POSITIVE
        return SentimentResult(label, 0.9), Usage(10, 8, 0)

    async def chat_stream(self, prompt: Prompt, timeout_s: float | None) -> AsyncIterator[InferenceChunk]:
        self.chat_calls += 1
        self.images.append(prompt.images)
        self.timeouts.append(timeout_s)
        if self.gate is not None:
            await self.gate.wait()
        words = self.reply.split(" ")
        for i, w in enumerate(words[:-1]):
            if self.fail_after is not None and i >= self.fail_after:
                raise Unavailable("inference: injected failure")
            yield InferenceChunk(w + " ")
            await asyncio.sleep(0)
        yield InferenceChunk(words[-1], Finish.STOP, Usage(20, 12, len(words)))
        # Like a real gRPC stream, the end of the stream comes a moment after the last message.
        await asyncio.sleep(0.01)

    async def model_identity(self) -> ModelIdentity:
        return MODEL
