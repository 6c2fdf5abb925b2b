"""The inference service's domain API: validation, readiness, admission, batching and the worker hand-off.

Every request is priced in tokens and admitted against its deadline first
(:mod:`.scheduling`); then short classify texts join a shared batch, while a
classify text longer than one prefill chunk, like a chat, runs as a stream of
chunk steps that the worker interleaves with everyone else's work.

The servicer translates protobuf to these calls; nothing here knows about gRPC.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from inference_svc.core.batcher import ClassifyBatcher
from inference_svc.core.engine import ChatChunk, Classification, Engine, ModelDescription
from inference_svc.core.request import ChatRequest
from inference_svc.core.scheduling import DEFAULT_TENANT, Admission, Cost, Step, Ticket
from inference_svc.core.worker import ModelWorker
from inference_svc.runtime import vision
from reprise.domain import Decoding, SentimentResult, Usage
from reprise.errors import InvalidArgument, Unavailable
from reprise.images import check_images, decode_images
from reprise.sampling import check_sampling
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
    #: Classify texts up to this many tokens join shared batches; longer ones are prefilled in slices.
    max_text_tokens: int = 128


@dataclass(frozen=True)
class Classified:
    result: SentimentResult
    usage: Usage
    queue_ms: float
    compute_ms: float
    batch_size: int = 1


class InferenceService:
    def __init__(
        self,
        engine: Engine,
        worker: ModelWorker,
        limits: Limits = Limits(),
        batching: Batching = Batching(),
        prefill_slice: int = 32,
    ) -> None:
        self._engine = engine
        self._batch_text_tokens = batching.max_text_tokens
        self._prefill_slice = prefill_slice
        self._worker = worker
        self._limits = limits
        self._batcher: ClassifyBatcher[Classification] = ClassifyBatcher(
            worker, engine.classify_batch, batching.max_batch, batching.max_wait_ms / 1000, batching.max_pending
        )
        self.admission = Admission(worker.rates)
        self._ready = False

    def _chunk_tokens(self) -> int:
        """Prompt tokens in the next prefill pass: a whole chunk when nothing else waits, a slice when it does.

        A waiting request waits for the pass in progress, so while others wait passes are kept short
        (``prefill_slice``); alone, a prompt runs in the larger, slightly more efficient chunks.
        """
        chunk = self._engine.config.prefill_chunk
        return min(chunk, self._prefill_slice) if self._worker.contended else chunk

    async def start(self) -> None:
        """Load and warm the model on the worker thread; the event loop stays free meanwhile."""
        self._worker.start()
        await self._worker.call(lambda _: self._engine.load())
        await self._worker.call(lambda _: self._engine.warm_up())
        await self._measure_rates()
        self._ready = True

    async def _measure_rates(self) -> None:
        """Measure prefill and decode rates once through the serving paths, so the first requests are priced right."""
        text = "A short warm-up review: the battery lasts all day and the screen is bright. " * 3
        await self._batcher.classify(text, tokens=self._engine.count_classify_tokens(text))
        chat = ChatRequest(text, decoding=Decoding(max_new_tokens=8))

        def run(cancelled: threading.Event) -> Iterator[Step]:
            return self._engine.chat_steps(chat, cancelled, remember=False)

        async for _ in self._worker.stream(run):
            pass

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

    def _check_chat(self, request: ChatRequest) -> None:
        """Every limit a chat request is held to before it is priced (the first one broken is named)."""
        self._check_text(request.text)
        lim = self._limits
        history, decoding = request.history, request.decoding
        if len(history) > lim.max_history_turns:
            raise InvalidArgument("history", f"has {len(history)} turns; the limit is {lim.max_history_turns}")
        check_turns(history)
        check_sampling(decoding)
        if decoding.max_new_tokens is not None and not 1 <= decoding.max_new_tokens <= lim.max_new_tokens:
            raise InvalidArgument("decoding.max_new_tokens", f"must be in [1, {lim.max_new_tokens}]")
        if len(decoding.stop) > lim.max_stop_strings:
            raise InvalidArgument("decoding.stop", f"has {len(decoding.stop)} strings; the limit is {lim.max_stop_strings}")
        for i, stop in enumerate(decoding.stop):
            if not stop or len(stop) > lim.max_stop_chars:
                raise InvalidArgument(f"decoding.stop[{i}]", f"must be 1 to {lim.max_stop_chars} characters")
        if request.images:
            self._check_takes_images(request.images)
        system_prompt = request.system_prompt
        if system_prompt is not None and len(system_prompt) > lim.max_text_chars:
            raise InvalidArgument("system_prompt", f"is {len(system_prompt)} characters; the limit is {lim.max_text_chars}")

    async def classify(self, text: str, tenant: str = DEFAULT_TENANT, seconds_left: float | None = None) -> Classified:
        """Classify ``text``; ``ResourceExhausted`` at once when it cannot finish within ``seconds_left``."""
        self._check_ready()
        self._check_text(text)
        tokens = self._engine.count_classify_tokens(text)
        limit = self._engine.classify_token_limit
        if tokens > limit:
            raise InvalidArgument("text", f"is {tokens} tokens; the limit is {limit}")
        slice_tokens = min(self._prefill_slice, self._engine.config.prefill_chunk)
        batched = tokens <= min(self._batch_text_tokens, self._engine.config.prefill_chunk)  # run between any two steps
        ticket = self.admission.admit(tenant, Cost(tokens), seconds_left, express=batched, step_tokens=slice_tokens)
        try:
            if batched:
                out = await self._batcher.classify(text, tenant, tokens)
                c = out.value
                return Classified(c.result, c.usage, out.queue_ms, out.compute_ms, out.batch_size)
            return await self._classify_long(text, tenant, ticket)
        finally:
            self.admission.release(ticket)

    async def _classify_long(self, text: str, tenant: str, ticket: Ticket) -> Classified:
        """A text longer than a prefill chunk: one chunk per worker step, short requests run in between."""
        queued = time.perf_counter()
        started: list[float] = []

        def run(cancelled: threading.Event) -> Iterator[Step]:
            started.append(time.perf_counter())
            return self._engine.classify_steps(text, cancelled, self._chunk_tokens)

        result: Classification | None = None
        async for result in self._worker.stream(run, tenant, ticket):  # type: ignore[arg-type]
            pass
        assert result is not None, "the classify stream ended without a result"
        done = time.perf_counter()
        return Classified(result.result, result.usage, (started[0] - queued) * 1000, (done - started[0]) * 1000)

    async def chat_stream(
        self, request: ChatRequest, tenant: str = DEFAULT_TENANT, seconds_left: float | None = None
    ) -> AsyncIterator[tuple[ChatChunk, float]]:
        """Yields (chunk, queue_ms); queue_ms is the same on every chunk.

        Refused at once (``ResourceExhausted``) when the reply, priced at its prompt and
        ``max_new_tokens``, is not expected to finish within ``seconds_left``. ``request.images``
        (encoded files) go with the new message: vision-language models only.
        """
        self._check_ready()
        self._check_chat(request)
        new_tokens = request.decoding.max_new_tokens or self._engine.config.max_new_tokens
        # Refuse on the reply alone first: a burst of refusals must stay cheap, since every millisecond
        # the event loop holds the GIL (templating, tokenizing) is taken from the model worker's steps.
        self.admission.check(tenant, Cost(0, new_tokens), seconds_left)
        if request.images:
            request = request.with_pictures(await self._pictures(request.images))
        prompt_tokens = self._engine.count_chat_tokens(request)
        # The prefix KV index may hold most of the prompt; pricing all of it errs on the side of refusing.
        ticket = self.admission.admit(tenant, Cost(prompt_tokens, new_tokens), seconds_left)
        queued = time.perf_counter()
        started: list[float] = []

        def run(cancelled: threading.Event) -> Iterator[Step]:
            started.append(time.perf_counter())
            return self._engine.chat_steps(request, cancelled, chunk_tokens=self._chunk_tokens)

        try:
            async for chunk in self._worker.stream(run, tenant, ticket):
                yield chunk, (started[0] - queued) * 1000
        finally:
            self.admission.release(ticket)

    @property
    def takes_images(self) -> bool:
        """The loaded model is a vision-language one (Chat's ``images`` are served)."""
        self._check_ready()
        return vision.takes_images(self._engine.model)

    def _check_takes_images(self, images: Sequence[bytes]) -> None:
        """Images need a vision-language model; then the caps that need no decoding (count, bytes)."""
        if not vision.takes_images(self._engine.model):
            d = self._engine.describe()
            raise InvalidArgument("images", f"model {d.model_id} ({d.architecture}) takes no images")
        check_images(images)

    async def _pictures(self, images: Sequence[bytes]) -> vision.Pictures:
        """Decode (pixel caps first) and patch the images off the event loop and off the model thread."""
        model: vision.VisionModel = self._engine.model
        return await asyncio.to_thread(lambda: model.prepare(decode_images(images)))

    async def describe(self) -> ModelDescription:
        self._check_ready()
        return self._engine.describe()
