"""The cache-first flow: validate, ask the cache (hot layer first), else run the model once, store after.

A request never gets worse because of the cache: lookups have a tight budget
and a circuit breaker (:mod:`.front`), write-backs happen after the response.
Identical requests in flight share one lookup and one model call (:mod:`.bursts`),
and misses with the same cache key share one model call (:mod:`.calls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace

from gateway.core.breaker import BreakerConfig, BreakerState, CircuitBreaker
from gateway.core.bursts import Bursts, Looked
from gateway.core.calls import ModelCalls, complete, one, reply_answer, trace_join, unusable, until_finished
from gateway.core.front import CacheFront, FrontConfig, Found
from gateway.core.hot import HotConfig, HotLayer
from gateway.core.limits import Admission, Limits, Validator
from gateway.core.policy import Plan, Policies, TaskDefaults, default_task_defaults
from gateway.core.ports import CachePort, InferencePort, NullObserver, Observer
from gateway.core.stats import Counters
from gateway.core.types import (
    ALL_TENANTS,
    TASK_CHAT,
    TASK_SENTIMENT,
    AnalyzeOutcome,
    CacheInfo,
    CacheRequest,
    ChatDelta,
    ChatOutcome,
    ClassifyOutcome,
    GatewayStats,
    InferenceChunk,
    ModelIdentity,
    Policy,
    Prompt,
    TenantStats,
    Timings,
)
from reprise import tracing
from reprise.domain import Answer, SentimentResult, Usage
from reprise.errors import InvalidArgument, Unavailable
from reprise.images import check_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    #: Budget for a cache lookup; past it the request is treated as a miss.
    cache_timeout_s: float = 0.03
    store_timeout_s: float = 2.0
    #: Characters per message when replaying a cached reply as a stream.
    replay_chunk_chars: int = 16
    #: Requests in flight before RESOURCE_EXHAUSTED (0: no limit).
    max_in_flight: int = 512
    #: Model calls in flight before RESOURCE_EXHAUSTED (0: no limit). Hits never count.
    max_model_in_flight: int = 32
    #: How often the model identity (part of every key) is re-read from inference.
    model_refresh_s: float = 30.0
    limits: Limits = field(default_factory=Limits)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    hot: HotConfig = field(default_factory=HotConfig)
    task_defaults: Mapping[str, TaskDefaults] = field(default_factory=default_task_defaults)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class Gateway:
    def __init__(
        self,
        cache: CachePort,
        inference: InferencePort,
        config: GatewayConfig = GatewayConfig(),
        observer: Observer | None = None,
    ) -> None:
        self._inference = inference
        self._config = config
        self._observer = observer or NullObserver()
        self.front = CacheFront(
            cache,
            CircuitBreaker(config.breaker, on_change=self._breaker_changed),
            HotLayer(config.hot),
            self._observer,
            FrontConfig(lookup_timeout_s=config.cache_timeout_s, store_timeout_s=config.store_timeout_s),
            on_invalidation=self._invalidated,
        )
        self.validate = Validator(config.limits)
        self._policies = Policies(config.task_defaults)
        self.requests = Admission(config.max_in_flight, "gateway requests")
        self.model_calls = Admission(config.max_model_in_flight, "model calls")
        self._counters = Counters()
        self._calls = ModelCalls(self.front, self.model_calls, self._counters, self._observer, config.cache_timeout_s)
        self._bursts = Bursts()
        self._model: ModelIdentity | None = None
        self._background: list[asyncio.Task[None]] = []

    def _invalidated(self) -> None:
        # Finished flows and calls may hold answers that were just invalidated: nobody replays them.
        self._bursts.drop_finished()
        self._calls.drop_finished()

    def _breaker_changed(self, state: BreakerState) -> None:
        level = logging.INFO if state is BreakerState.CLOSED else logging.WARNING
        log.log(level, "cache circuit breaker %s", state.value)
        self._observer.breaker(state.value)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the model identity (part of every cache key), then follow invalidations."""
        delay = 0.1
        while True:
            try:
                self._model = await self._inference.model_identity()
                log.info("serving model %s revision %s", self._model.model_id, self._model.revision)
                break
            except Unavailable as exc:
                log.warning("waiting for inference: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._background = [
            asyncio.ensure_future(self.front.watch_invalidations()),
            asyncio.ensure_future(self._refresh_model()),
        ]

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.front.close()

    async def _refresh_model(self) -> None:
        """A redeployed model has a new revision: keys must follow, or old answers would be served."""
        while True:
            await asyncio.sleep(self._config.model_refresh_s)
            try:
                model = await self._inference.model_identity()
            except Exception as exc:  # keep the identity we have; inference may be restarting
                log.info("model identity refresh failed: %s", exc)
                continue
            if model != self._model:
                log.warning("model changed: %s -> %s", self._model, model)
                self._model = model
                self.front.hot.clear()

    @property
    def model(self) -> ModelIdentity | None:
        return self._model

    def totals(self) -> TenantStats:
        """Counters summed over tenants (for metrics)."""
        return self._counters.total()

    def per_tenant(self) -> list[tuple[str, TenantStats]]:
        """Counters per tenant, first seen first (for metrics)."""
        return self._counters.per_tenant()

    # -- public API (each call holds one admission slot) -----------------------------------

    async def classify(self, tenant: str, text: str, policy: Policy, timeout_s: float | None = None) -> ClassifyOutcome:
        with self.requests.slot(tenant):
            self.validate.text(text)
            self.validate.policy(policy)
            return await self._classify(tenant, text, policy, timeout_s)

    async def chat(self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None = None) -> ChatOutcome:
        with self.requests.slot(tenant):
            self.validate.chat(prompt)
            self.validate.policy(policy)
            self._check_images(prompt.images)
            return await self._chat(tenant, prompt, policy, timeout_s)

    async def chat_stream(
        self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None = None
    ) -> AsyncIterator[ChatDelta]:
        with self.requests.slot(tenant):
            self.validate.chat(prompt)
            self.validate.policy(policy)
            self._check_images(prompt.images)
            async for delta in self._chat_stream(tenant, prompt, policy, timeout_s):
                yield delta

    async def analyze(
        self, tenant: str, prompt: Prompt, policy: Policy, tasks: tuple[str, ...] = (), timeout_s: float | None = None
    ) -> AnalyzeOutcome:
        """Sentiment of the prompt's text and a reply to it (its decoding is the reply's)."""
        with self.requests.slot(tenant):
            wanted = self.validate.tasks(tasks)
            self.validate.text(prompt.text)
            self.validate.decoding(prompt.decoding)
            self.validate.policy(policy)
            jobs: dict[str, asyncio.Task[object]] = {}
            if TASK_SENTIMENT in wanted:
                jobs[TASK_SENTIMENT] = asyncio.ensure_future(self._classify(tenant, prompt.text, policy, timeout_s))
            if TASK_CHAT in wanted:
                jobs[TASK_CHAT] = asyncio.ensure_future(self._chat(tenant, prompt, policy, timeout_s))
            try:
                done, _ = await asyncio.wait(jobs.values(), return_when=asyncio.FIRST_EXCEPTION)
                for job in done:
                    job.result()  # the first failure fails the call
            finally:
                for job in jobs.values():
                    job.cancel()
            return AnalyzeOutcome(
                jobs[TASK_SENTIMENT].result() if TASK_SENTIMENT in jobs else None,  # type: ignore[arg-type]
                jobs[TASK_CHAT].result() if TASK_CHAT in jobs else None,  # type: ignore[arg-type]
            )

    async def stats(self, tenant: str | None) -> GatewayStats:
        """The figures of ``tenant`` only; ``None`` (an operator) gets this replica's totals over all tenants.

        A tenant must not learn its neighbours' traffic, hot entries or overload
        from Stats; the breaker and hot-layer state are the replica's, not anyone's data.
        """
        if tenant is None:
            return GatewayStats(
                tenant=ALL_TENANTS,
                counters=self._counters.total(),
                breaker_state=self.front.breaker.state.value,
                hot_active=self.front.hot.active,
                hot_entries=len(self.front.hot),
                in_flight=self.requests.in_flight,
                model_in_flight=self.model_calls.in_flight,
                cache_entries=await self.front.entries(""),
                model=self._model,
                rejected_overload=self.requests.rejected + self.model_calls.rejected,
            )
        return GatewayStats(
            tenant=tenant,
            counters=self._counters.of(tenant),
            breaker_state=self.front.breaker.state.value,
            hot_active=self.front.hot.active,
            hot_entries=self.front.hot.count(tenant),
            in_flight=self.requests.in_flight_by.get(tenant, 0),
            model_in_flight=self.model_calls.in_flight_by.get(tenant, 0),
            cache_entries=await self.front.entries(tenant),
            model=self._model,
            rejected_overload=self.requests.rejected_by.get(tenant, 0) + self.model_calls.rejected_by.get(tenant, 0),
        )

    # -- the flow ---------------------------------------------------------------------------

    def _check_images(self, images: tuple[bytes, ...]) -> None:
        """Refuse pictures a text-only model would refuse anyway, before the cache decodes them; then the caps."""
        if images and self._model is not None and self._model.takes_images is False:
            raise InvalidArgument("images", f"model {self._model.model_id} takes no images")
        check_files(images)

    def _request(self, tenant: str, task: str, prompt: Prompt) -> CacheRequest:
        if self._model is None:
            raise Unavailable("gateway is starting: model identity unknown")
        return CacheRequest(namespace=tenant, task=task, model=self._model, prompt=prompt)

    def _finish(self, task: str, tenant: str, info: CacheInfo, start: float) -> None:
        self._counters.count(tenant, info)
        self._observer.request(task, info.status.value, info.hot, time.perf_counter() - start)
        if tracing.recording():  # on the request's span: Analyze answers two tasks, so the status is per task
            tracing.annotate({tracing.NAMESPACE: tenant, f"{tracing.CACHE_STATUS}.{task}": info.status.value})

    @contextlib.asynccontextmanager
    async def _shared(
        self, task: str, request: CacheRequest, plan: Plan, flow: Callable[[], AsyncIterator[object]]
    ) -> AsyncIterator[tuple[Looked, AsyncIterator[object]]]:
        """Run ``flow`` for this request, or read the identical one in flight (:mod:`.bursts`).

        Yields what the lookup found and the model items that follow it (none on a hit).
        """
        if not plan.coalesce:
            async with contextlib.aclosing(flow()) as items:
                yield await anext(items), items  # type: ignore[misc]
            return
        key = (request, plan)
        flight, joined = self._bursts.join(key, flow, reuse_finished=plan.lookup)
        async with contextlib.aclosing(flight.read()) as items:
            looked: Looked = await anext(items)  # type: ignore[assignment]
            if joined:
                self._observer.coalesced(task)
                looked = Looked(looked.found, replace(looked.info, coalesced=True), looked.call)
                if tracing.enabled() and looked.call is not None:
                    trace_join(task, request, looked.call)
            yield looked, items
        # Reached only when the caller read its whole answer (not on errors or cancellation).
        self._bursts.answered(key, flight)

    async def _classify(self, tenant: str, text: str, policy: Policy, timeout_s: float | None) -> ClassifyOutcome:
        start = time.perf_counter()
        request = self._request(tenant, TASK_SENTIMENT, Prompt(text))
        plan = self._policies.plan(TASK_SENTIMENT, policy)
        flow = lambda: self._classify_flow(request, plan, text, timeout_s)  # noqa: E731
        async with self._shared(TASK_SENTIMENT, request, plan, flow) as (looked, items):
            found, info = looked.found, looked.info
            if found.hit is not None:
                answer = found.hit.entry.answer
                self._finish(TASK_SENTIMENT, tenant, info, start)
                return ClassifyOutcome(
                    answer.sentiment, info, answer.usage, Timings(_ms(start), found.cache_ms, 0.0, found.stages)  # type: ignore[arg-type]
                )
            t = time.perf_counter()
            async for item in items:
                result, usage = item  # type: ignore[misc]
        inference_ms = _ms(t)
        self._finish(TASK_SENTIMENT, tenant, info, start)
        stages = {**found.stages, "wait" if info.coalesced else "inference": inference_ms}
        return ClassifyOutcome(result, info, usage, Timings(_ms(start), found.cache_ms, inference_ms, stages))

    async def _classify_flow(
        self, request: CacheRequest, plan: Plan, text: str, timeout_s: float | None
    ) -> AsyncIterator[object]:
        """Lookup, then (on a miss) the model call's one item: what identical requests share."""
        found = await self.front.find(request, plan, timeout_s)
        if found.hit is not None and found.hit.entry.answer.sentiment is not None:
            yield Looked(found, found.info)
            return
        found = unusable(found, plan)  # a hit without a label (should not happen) is a miss

        async def compute() -> tuple[SentimentResult, Usage]:
            return await self._inference.classify(text, timeout_s)

        def answer_of(items: list[object]) -> Answer | None:
            result, usage = items[0]  # type: ignore[misc]
            return Answer(sentiment=result, usage=usage)

        call, info = self._calls.join(TASK_SENTIMENT, request, found, plan, lambda: one(compute), answer_of)
        yield Looked(found, info, call)
        async with contextlib.aclosing(call.read()) as results:
            async for result in results:
                yield result
                return  # the one result: the flow is complete now, not when the call is forgotten

    async def _chat(self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None) -> ChatOutcome:
        start = time.perf_counter()
        request, plan, flow = self._chat_plan(tenant, prompt, policy, timeout_s)
        async with self._shared(TASK_CHAT, request, plan, flow) as (looked, chunks):
            found, info = looked.found, looked.info
            if found.hit is not None:
                a = found.hit.entry.answer
                self._finish(TASK_CHAT, tenant, info, start)
                return ChatOutcome(a.reply, a.finish, info, a.usage, Timings(_ms(start), found.cache_ms, 0.0, found.stages))  # type: ignore[arg-type]
            t = time.perf_counter()
            parts: list[str] = []
            last: InferenceChunk | None = None
            async for chunk in chunks:
                last = chunk  # type: ignore[assignment]
                parts.append(last.delta)  # type: ignore[union-attr]
        complete(last)
        inference_ms = _ms(t)
        self._finish(TASK_CHAT, tenant, info, start)
        stages = {**found.stages, "wait" if info.coalesced else "inference": inference_ms}
        return ChatOutcome(
            "".join(parts), last.finish, info, last.usage or Usage(), Timings(_ms(start), found.cache_ms, inference_ms, stages)  # type: ignore[union-attr]
        )

    def _chat_plan(
        self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None
    ) -> tuple[CacheRequest, Plan, Callable[[], AsyncIterator[object]]]:
        request = self._request(tenant, TASK_CHAT, prompt)
        plan = self._policies.plan(TASK_CHAT, policy, prompt.decoding)

        def source() -> AsyncIterator[object]:
            chunks = self._inference.chat_stream(prompt, timeout_s)
            return until_finished(chunks)  # type: ignore[return-value]

        return request, plan, lambda: self._chat_flow(request, plan, source, timeout_s)

    async def _chat_flow(
        self, request: CacheRequest, plan: Plan, source: Callable[[], AsyncIterator[object]], timeout_s: float | None
    ) -> AsyncIterator[object]:
        """Lookup, then (on a miss) the model call's reply stream: what identical requests share."""
        found = await self.front.find(request, plan, timeout_s)
        if found.hit is not None and found.hit.entry.answer.reply is not None:
            yield Looked(found, found.info)
            return
        found = unusable(found, plan)
        call, info = self._calls.join(TASK_CHAT, request, found, plan, source, reply_answer)
        yield Looked(found, info, call)
        async for chunk in until_finished(call.read()):  # type: ignore[arg-type]
            yield chunk

    async def _chat_stream(
        self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None
    ) -> AsyncIterator[ChatDelta]:
        start = time.perf_counter()
        request, plan, flow = self._chat_plan(tenant, prompt, policy, timeout_s)
        async with self._shared(TASK_CHAT, request, plan, flow) as (looked, chunks):
            found, info = looked.found, looked.info
            if found.hit is not None:
                async for delta in self._replay(found, info, start):
                    yield delta
                self._finish(TASK_CHAT, tenant, info, start)
                return
            t = time.perf_counter()
            first: float | None = None
            cache: CacheInfo | None = info
            async for item in chunks:
                chunk: InferenceChunk = item  # type: ignore[assignment]
                if first is None:
                    first = _ms(t)
                if chunk.finish is None:
                    yield ChatDelta(chunk.delta, cache=cache)
                    cache = None
                    continue
                inference_ms = _ms(t)
                stages = {**found.stages, "wait" if info.coalesced else "inference": inference_ms, "ttft": first}
                self._finish(TASK_CHAT, tenant, info, start)
                yield ChatDelta(
                    chunk.delta,
                    cache=cache,
                    finish=chunk.finish,
                    usage=chunk.usage or Usage(),
                    timings=Timings(_ms(start), found.cache_ms, inference_ms, stages),
                )
                return
        complete(None)

    async def _replay(self, found: Found, info: CacheInfo, start: float) -> AsyncIterator[ChatDelta]:
        """A cached reply as a stream, in the same message format as a live one."""
        answer = found.hit.entry.answer  # type: ignore[union-attr]
        reply, n = answer.reply or "", self._config.replay_chunk_chars
        pieces = [reply[i : i + n] for i in range(0, len(reply), n)] or [""]
        t = time.perf_counter()
        for i, piece in enumerate(pieces[:-1]):
            yield ChatDelta(piece, cache=info if i == 0 else None)
        stages = {**found.stages, "replay": _ms(t)}
        yield ChatDelta(
            pieces[-1],
            cache=info if len(pieces) == 1 else None,
            finish=answer.finish,
            usage=answer.usage,
            timings=Timings(_ms(start), found.cache_ms, 0.0, stages),
        )
