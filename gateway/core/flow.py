"""The cache-first flow: one path for every request, from the cache or else the model, written back after.

:meth:`Gateway._serve` is that path; Classify, Chat and ChatStream are shapes of what it
yields, and Analyze runs two of them. It asks the cache (hot layer first, :mod:`.front`),
else runs the model once (:meth:`Gateway._answer`), which writes the answer back as soon
as it is whole. A request never gets worse because of the cache: lookups have a tight
budget and a circuit breaker, write-backs happen after the response. Identical requests
in flight share one lookup and one model call (:mod:`.bursts`), and misses with the same
cache key share one model call (:mod:`.calls`).
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
from gateway.core.calls import ModelCalls, trace_join
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
    CacheStatus,
    ChatDelta,
    ChatOutcome,
    ClassifyOutcome,
    GatewayStats,
    ModelIdentity,
    Policy,
    Prompt,
    TenantStats,
    Timings,
)
from reprise import tracing
from reprise.domain import Answer, Usage
from reprise.errors import InvalidArgument, ResourceExhausted, Unavailable
from reprise.images import check_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    #: Budget for a cache lookup; past it the request is treated as a miss.
    cache_timeout_s: float = 0.03
    #: A lookup may take this share of what its task's misses cost lately, up to ``cache_timeout_max_s``
    #: (:meth:`.front.CacheFront.lookup_budget`).
    cache_timeout_miss_share: float = 0.25
    cache_timeout_max_s: float = 1.0
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


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of an answer as the model gives it: text of a reply; the last part holds the whole answer."""

    delta: str
    answer: Answer | None = None


@dataclass(frozen=True, slots=True)
class Served:
    """A part of an answer as :meth:`Gateway._serve` hands it to the RPC's shape: where it came from;
    with the last part, where the time went."""

    info: CacheInfo
    part: Part
    timings: Timings | None = None


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
            FrontConfig(
                lookup_timeout_s=config.cache_timeout_s,
                store_timeout_s=config.store_timeout_s,
                lookup_miss_share=config.cache_timeout_miss_share,
                lookup_timeout_max_s=config.cache_timeout_max_s,
            ),
            # Read when a lookup reaches its budget: a miss that would be refused is worse than a slow cache.
            model_full=self._model_full,
        )
        self.validate = Validator(config.limits)
        self._policies = Policies(config.task_defaults)
        self.requests = Admission(config.max_in_flight, "gateway requests")
        self.model_calls = Admission(config.max_model_in_flight, "model calls")
        self._counters = Counters()
        self._calls = ModelCalls(self.model_calls, self._counters, self._observer, config.cache_timeout_s)
        self._bursts = Bursts()
        self._model: ModelIdentity | None = None
        self._model_refused_at = float("-inf")
        self._background: list[asyncio.Task[None]] = []

    #: After inference refused a call (RESOURCE_EXHAUSTED), the model counts as full this long.
    MODEL_REFUSED_S = 1.0

    def _model_full(self) -> bool:
        """A miss sent now would be refused: every model call slot is taken, or inference refused one lately."""
        return self.model_calls.full or time.monotonic() - self._model_refused_at < self.MODEL_REFUSED_S

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
            asyncio.ensure_future(self._follow_invalidations()),
            asyncio.ensure_future(self._refresh_model()),
        ]

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.front.close()

    async def _follow_invalidations(self) -> None:
        """The cache's invalidations: the front applies each to the hot layer; finished flows and
        calls may hold answers that were just invalidated, so nobody replays them."""
        async for _ in self.front.watch_invalidations():
            self._bursts.drop_finished()
            self._calls.drop_finished()

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
            return await self._classify(tenant, Prompt(text), policy, timeout_s)

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
                jobs[TASK_SENTIMENT] = asyncio.ensure_future(self._classify(tenant, Prompt(prompt.text), policy, timeout_s))
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

    # -- the three shapes of an answer ------------------------------------------------------

    async def _classify(self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None) -> ClassifyOutcome:
        last = await _last(self._serve(TASK_SENTIMENT, tenant, prompt, policy, timeout_s))
        answer = last.part.answer
        return ClassifyOutcome(answer.sentiment, last.info, answer.usage, last.timings)  # type: ignore[union-attr,arg-type]

    async def _chat(self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None) -> ChatOutcome:
        last = await _last(self._serve(TASK_CHAT, tenant, prompt, policy, timeout_s))
        answer = last.part.answer
        return ChatOutcome(answer.reply or "", answer.finish, last.info, answer.usage, last.timings)  # type: ignore[union-attr,arg-type]

    async def _chat_stream(
        self, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None
    ) -> AsyncIterator[ChatDelta]:
        first = True
        async for served in self._serve(TASK_CHAT, tenant, prompt, policy, timeout_s, stream=True):
            answer = served.part.answer
            yield ChatDelta(
                served.part.delta,
                cache=served.info if first else None,
                finish=answer.finish if answer else None,
                usage=answer.usage if answer else None,
                timings=served.timings,
            )
            first = False

    # -- the flow ---------------------------------------------------------------------------

    async def _serve(
        self, task: str, tenant: str, prompt: Prompt, policy: Policy, timeout_s: float | None, stream: bool = False
    ) -> AsyncIterator[Served]:
        """The one path of every request: the cache's answer, else the model's, in pieces.

        Every part says where the answer came from; the last one holds the whole answer
        and the timings. A cached reply is one piece, or for a ``stream`` replayed in
        pieces of ``replay_chunk_chars``; a live stream also reports its time to first piece.
        """
        start = time.perf_counter()
        request = self._request(tenant, task, prompt)
        plan = self._policies.plan(task, policy, prompt.decoding)
        async with self._shared(request, plan, timeout_s) as (looked, parts):
            found, info = looked.found, looked.info
            if found.hit is not None:
                answer, t = found.hit.entry.answer, time.perf_counter()
                pieces = self._replay(answer.reply or "") if stream else [answer.reply or ""]
                for piece in pieces[:-1]:
                    yield Served(info, Part(piece))
                stages = {**found.stages, "replay": _ms(t)} if stream else found.stages
                self._finish(task, tenant, info, start)
                yield Served(info, Part(pieces[-1], answer), Timings(_ms(start), found.cache_ms, 0.0, stages))
                return
            t = time.perf_counter()
            first: float | None = None
            async for item in parts:
                part: Part = item  # type: ignore[assignment]
                first = _ms(t) if first is None else first
                if part.answer is None:
                    yield Served(info, part)
                    continue
                inference_ms = _ms(t)
                stages = {**found.stages, "wait" if info.coalesced else "inference": inference_ms}
                if stream:
                    stages["ttft"] = first
                self._finish(task, tenant, info, start)
                yield Served(info, part, Timings(_ms(start), found.cache_ms, inference_ms, stages))
                return
        # Inference streams end with a finish reason; anything else is a broken stream, never stored.
        raise Unavailable("inference: the reply stream ended before the reply was complete")

    def _replay(self, reply: str) -> list[str]:
        """A cached reply cut into the pieces a stream replays it in (one, empty, for an empty reply)."""
        n = self._config.replay_chunk_chars
        return [reply[i : i + n] for i in range(0, len(reply), n)] or [""]

    @contextlib.asynccontextmanager
    async def _shared(
        self, request: CacheRequest, plan: Plan, timeout_s: float | None
    ) -> AsyncIterator[tuple[Looked, AsyncIterator[object]]]:
        """This request's :meth:`_flow`, or the identical one in flight (:mod:`.bursts`).

        Yields what the lookup found and the model's parts that follow it (none on a hit).
        """
        if not plan.coalesce:
            async with contextlib.aclosing(self._flow(request, plan, timeout_s)) as items:
                yield await anext(items), items  # type: ignore[misc]
            return
        key = (request, plan)
        flight, joined = self._bursts.join(key, lambda: self._flow(request, plan, timeout_s), reuse_finished=plan.lookup)
        async with contextlib.aclosing(flight.read()) as items:
            looked: Looked = await anext(items)  # type: ignore[assignment]
            if joined:
                self._observer.coalesced(request.task)
                looked = Looked(looked.found, replace(looked.info, coalesced=True), looked.call)
                if tracing.enabled() and looked.call is not None:
                    trace_join(request.task, request, looked.call)
            yield looked, items
        # Reached only when the caller read its whole answer (not on errors or cancellation).
        self._bursts.answered(key, flight)

    async def _flow(self, request: CacheRequest, plan: Plan, timeout_s: float | None) -> AsyncIterator[object]:
        """Lookup, then (on a miss) the model call's parts: what identical requests share."""
        found = _usable(request.task, await self.front.find(request, plan, timeout_s), plan)
        if found.hit is not None:
            yield Looked(found, found.info)
            return
        requested_by = tracing.current()
        call, info = self._calls.join(
            request, found, plan, lambda stored: self._answer(request, plan, timeout_s, requested_by, stored)
        )
        yield Looked(found, info, call)
        async with contextlib.aclosing(call.read()) as parts:
            async for part in parts:
                yield part
                if part.answer is not None:  # type: ignore[attr-defined]
                    return  # the answer is whole: the flow is complete now, not when the call is forgotten

    async def _answer(
        self,
        request: CacheRequest,
        plan: Plan,
        timeout_s: float | None,
        requested_by: tracing.SpanContext,
        stored: Callable[[asyncio.Task[None]], None],
    ) -> AsyncIterator[Part]:
        """The model's answer to a miss, part by part: what one model call carries (:mod:`.calls`).

        As soon as the answer is whole it is written back to the cache, in the background
        (its callers have it already); ``stored`` learns of that write, so that the call
        lingers until the answer can be found in the cache.
        """
        cost = self.front.miss_cost
        timing = cost.begin(request.task)
        try:
            answer = None
            async for part in self._model_parts(request, timeout_s):
                answer = part.answer
                if answer is not None:
                    cost.end(request.task, timing, answered=True)
                yield part
        except ResourceExhausted:
            self._model_refused_at = time.monotonic()
            raise
        finally:
            cost.end(request.task, timing, answered=False)
        if answer is None:
            return  # a broken stream: nothing to store (its readers fail)
        write = self.front.store_later(request, answer, plan, requested_by)
        if write is not None:
            stored(write)

    async def _model_parts(self, request: CacheRequest, timeout_s: float | None) -> AsyncIterator[Part]:
        """The model's parts for one miss; the last holds the whole answer (none when the stream broke)."""
        if request.task == TASK_SENTIMENT:
            result, usage = await self._inference.classify(request.prompt.text, timeout_s)
            answer = Answer(sentiment=result, usage=usage)
            yield Part("", answer)
        else:
            deltas: list[str] = []
            # Closed at the finish chunk: the reply is complete there, so it is stored at once,
            # not when the transport's end-of-stream arrives.
            async with contextlib.aclosing(self._inference.chat_stream(request.prompt, timeout_s)) as chunks:
                async for chunk in chunks:
                    deltas.append(chunk.delta)
                    if chunk.finish is None:
                        yield Part(chunk.delta)
                        continue
                    answer = Answer(reply="".join(deltas), finish=chunk.finish, usage=chunk.usage or Usage())
                    yield Part(chunk.delta, answer)
                    break


def _usable(task: str, found: Found, plan: Plan) -> Found:
    """A hit that cannot answer this task (an entry of the other kind; should not happen) is a miss."""
    if found.hit is None:
        return found
    answer = found.hit.entry.answer
    if (answer.sentiment if task == TASK_SENTIMENT else answer.reply) is not None:
        return found
    return Found(None, CacheInfo(CacheStatus.MISS, key=found.info.key, store=plan.store), found.cache_ms, found.stages)


async def _last(pieces: AsyncIterator[Served]) -> Served:
    """The last piece of an answer (with the whole of it), read to the end."""
    last = None
    async for last in pieces:  # noqa: B007
        pass
    assert last is not None  # _serve ends with the whole answer or raises
    return last
