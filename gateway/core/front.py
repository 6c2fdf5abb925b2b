"""The cache as the gateway uses it: hot layer, circuit breaker, tight lookup budget, write-back.

The budget grows with what a miss costs (:meth:`CacheFront.lookup_budget`): under load a busy cache is
still cheaper to wait for than the model it would otherwise send the request to.

Nothing here ever raises a cache problem to the caller: a failed, slow or
refused lookup is reported as a BYPASS with a reason, and the request goes on
to the model. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.core.breaker import BreakerState, CircuitBreaker
from gateway.core.hot import HotLayer
from gateway.core.policy import Plan
from gateway.core.ports import CacheError, CachePort, Observer
from gateway.core.types import CachedEntry, CacheHit, CacheInfo, CacheRequest, CacheStatus, Invalidation, LookupResult, StoredEntry
from reprise import tracing
from reprise.domain import Answer

log = logging.getLogger(__name__)

REASON_BREAKER_OPEN = "circuit breaker open"
REASON_TIMEOUT = "cache timeout"


@dataclass(frozen=True)
class FrontConfig:
    #: Budget for one lookup; past it the request is a miss (and the breaker hears of it).
    lookup_timeout_s: float = 0.03
    #: A lookup may also take this share of what a miss of its task costs lately (:class:`MissCost`),
    #: up to ``lookup_timeout_max_s``: when the model is slow (a long reply, a queue at inference),
    #: giving a busy cache up sends one more request to the busier, dearer model. 0: budgets are fixed.
    lookup_miss_share: float = 0.25
    lookup_timeout_max_s: float = 1.0
    #: Budget for one write-back (in the background).
    store_timeout_s: float = 2.0
    #: Pause before re-subscribing to invalidations after the stream broke.
    watch_retry_s: float = 1.0
    #: Pause before asking again a cache that does not implement the stream.
    watch_unimplemented_retry_s: float = 30.0


@dataclass(slots=True)
class Found:
    """Result of :meth:`CacheFront.find`: a hit, or why not, and where the time went."""

    hit: CacheHit | None
    info: CacheInfo
    cache_ms: float
    stages: dict[str, float] = field(default_factory=dict)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class MissCost:
    """What a miss of each task costs lately: a moving average of the model's answer times (seconds),
    queueing at inference included, and at least what the model calls still running have taken so far.

    The second part matters when the model slows down (a queue builds at inference): the calls still
    running say so before any of them is answered.
    """

    def __init__(self, weight: float = 0.2) -> None:
        self._weight = weight
        self._mean: dict[str, float] = {}
        self._running: dict[str, dict[object, float]] = {}

    def observe(self, task: str, seconds: float) -> None:
        mean = self._mean.get(task)
        self._mean[task] = seconds if mean is None else mean + self._weight * (seconds - mean)

    def begin(self, task: str) -> object:
        """A model call of ``task`` starts; pass the handle to :meth:`end`."""
        handle = object()
        self._running.setdefault(task, {})[handle] = time.perf_counter()
        return handle

    def end(self, task: str, handle: object, answered: bool) -> None:
        """The call is over (again: no-op); an ``answered`` one counts in the average."""
        start = self._running.get(task, {}).pop(handle, None)
        if start is not None and answered:
            self.observe(task, time.perf_counter() - start)

    def known(self, task: str) -> bool:
        """Whether a model call of ``task`` has been answered (so :meth:`expected` rests on a measurement)."""
        return task in self._mean

    def expected(self, task: str) -> float:
        """0 until a model call of ``task`` has run."""
        running = self._running.get(task)
        # Calls are added as they start, so the first still running is the oldest.
        oldest = time.perf_counter() - next(iter(running.values())) if running else 0.0
        return max(self._mean.get(task, 0.0), oldest)


class CacheFront:
    def __init__(
        self,
        cache: CachePort,
        breaker: CircuitBreaker,
        hot: HotLayer,
        observer: Observer,
        config: FrontConfig = FrontConfig(),
        model_full: Callable[[], bool] = lambda: False,
    ) -> None:
        """``model_full``: whether a miss would be refused now (no model call slot free)."""
        self._cache = cache
        self._model_full = model_full
        self.breaker = breaker
        self.hot = hot
        self._observer = observer
        self._config = config
        self._writes: set[asyncio.Task[None]] = set()
        self.miss_cost = MissCost()

    async def find(self, request: CacheRequest, plan: Plan, timeout_s: float | None) -> Found:
        """Hot layer, then the cache under its budget. Never raises except on cancellation."""
        if not tracing.recording():
            return await self._find(request, plan, timeout_s)
        with tracing.span("gateway.cache_lookup", {tracing.TASK: request.task, tracing.NAMESPACE: request.namespace}) as span:
            found = await self._find(request, plan, timeout_s)
            span.set_attributes(
                {
                    tracing.CACHE_STATUS: found.info.status.value,
                    tracing.CACHE_HOT: found.info.hot,
                    tracing.SIMILARITY: found.info.similarity,
                    tracing.CACHE_REASON: found.info.reason,
                }
            )
            return found

    def _ceiling(self, timeout_s: float | None) -> float:
        """The longest a lookup may be waited for: the cap, at most the miss share of the caller's ``timeout_s``
        (the model must still have time for a miss); 0 with the share at 0 (fixed budgets)."""
        share = self._config.lookup_miss_share
        ceiling = self._config.lookup_timeout_max_s if share > 0 else 0.0
        return ceiling if timeout_s is None else min(ceiling, share * timeout_s)

    def lookup_budget(self, task: str, plan: Plan, timeout_s: float | None = None) -> float:
        """The task's budget, or a share of what its misses cost lately when that is more (up to the ceiling);
        never past ``timeout_s``.

        Until a miss of the task has been answered, what a miss costs is unknown: the ceiling. A gateway
        that starts under load (a restarted pod) would otherwise give up its first lookups at the fixed
        budget and send that whole first burst to the model, which refuses most of it.
        """
        fixed = plan.lookup_timeout_s or self._config.lookup_timeout_s
        ceiling = self._ceiling(timeout_s)
        cost = self.miss_cost
        grown = min(ceiling, self._config.lookup_miss_share * cost.expected(task)) if cost.known(task) else ceiling
        budget = max(fixed, grown)
        return budget if timeout_s is None else max(0.001, min(budget, timeout_s))

    def lookup_patience(self, budget: float, timeout_s: float | None = None) -> float:
        """How long a lookup with ``budget`` is waited for when, at its budget, the model could not take the
        request anyway (no model call slot free): a refusal is worse than a slow cache. The ceiling; never less
        than the budget."""
        return max(budget, self._ceiling(timeout_s))

    async def _ask(self, request: CacheRequest, plan: Plan, budget: float, patience: float) -> LookupResult:
        """The cache's answer within ``budget``, or within ``patience`` when the model is full at the budget."""
        call = asyncio.ensure_future(
            self._cache.lookup(
                request,
                exact_only=plan.exact_only,
                min_similarity=plan.min_similarity,
                max_age_s=plan.max_age_s,
                timeout_s=patience,
            )
        )
        try:
            done, _ = await asyncio.wait({call}, timeout=budget)
            if not done and patience > budget and self._model_full():
                done, _ = await asyncio.wait({call}, timeout=patience - budget)
        except asyncio.CancelledError:
            call.cancel()
            raise
        if not done:
            call.cancel()
            raise CacheError("DEADLINE_EXCEEDED", f"no answer within the {budget * 1000:.0f} ms lookup budget")
        return call.result()

    async def _find(self, request: CacheRequest, plan: Plan, timeout_s: float | None) -> Found:
        start = time.perf_counter()
        if not plan.lookup:
            self._observer.lookup("skipped", 0.0)
            return Found(None, CacheInfo(CacheStatus.BYPASS, reason=plan.reason, store=plan.store), 0.0)
        entry = self.hot.get(request, plan.max_age_s)
        if entry is not None:
            ms = _ms(start)
            self._observer.lookup("hot", ms / 1000)
            info = CacheInfo(CacheStatus.EXACT, similarity=1.0, key=entry.key, hot=True)
            return Found(CacheHit(entry, info), info, ms, {"hot": ms})
        if not self.breaker.allow():
            stale = self._stale(request, plan, start, REASON_BREAKER_OPEN)
            if stale is not None:
                return stale
            self._observer.lookup("skipped", 0.0)
            return Found(None, CacheInfo(CacheStatus.BYPASS, reason=REASON_BREAKER_OPEN), _ms(start))
        budget = self.lookup_budget(request.task, plan, timeout_s)
        patience = self.lookup_patience(budget, timeout_s)
        epoch = self.hot.epoch
        t = time.perf_counter()
        try:
            result = await self._ask(request, plan, budget, patience)
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        except CacheError as exc:
            lookup_ms = _ms(t)
            if exc.counts_as_failure:
                self.breaker.failure()
            else:
                self.breaker.success()  # the cache answered; it just did not like the request
            timeout = exc.code == "DEADLINE_EXCEEDED"
            self._observer.lookup("timeout" if timeout else "error" if exc.counts_as_failure else "rejected", lookup_ms / 1000)
            # DEBUG: under an outage this fires per request; the breaker logs the state change once.
            log.debug("cache lookup failed: %s", exc)
            reason = REASON_TIMEOUT if timeout else f"cache error: {exc.code}"
            stale = self._stale(request, plan, start, reason)
            if stale is not None:
                return stale
            store = plan.store and self.breaker.state is BreakerState.CLOSED
            return Found(None, CacheInfo(CacheStatus.BYPASS, reason=reason, store=store), _ms(start), {"lookup": lookup_ms})
        lookup_ms = _ms(t)
        self.breaker.success()
        stages = {"lookup": lookup_ms, **{f"cache.{k}": v for k, v in result.stage_ms.items()}}
        if result.hit is None:
            self._observer.lookup("miss", lookup_ms / 1000)
            info = CacheInfo(CacheStatus.MISS, key=result.key, store=plan.store, rejected_reason=result.rejected_reason)
            return Found(None, info, _ms(start), stages)
        self._observer.lookup(result.hit.info.status.value, lookup_ms / 1000)
        if result.hit.info.status is CacheStatus.EXACT:
            self.hot.put(request, result.hit.entry, epoch)
        return Found(result.hit, result.hit.info, _ms(start), stages)

    def _stale(self, request: CacheRequest, plan: Plan, start: float, why: str) -> Found | None:
        """The hot copy past the layer's own age bound, when the cache cannot be asked.

        Still the cache's answer: the invalidation stream is connected (or the layer
        would be off) and has not removed it, and it has not expired.
        """
        entry = self.hot.get(request, plan.max_age_s, stale_ok=True)
        if entry is None:
            return None
        ms = _ms(start)
        self._observer.lookup("hot", ms / 1000)
        info = CacheInfo(CacheStatus.EXACT, similarity=1.0, key=entry.key, hot=True, reason=f"hot copy served: {why}")
        return Found(CacheHit(entry, info), info, ms, {"hot": ms})

    def store_later(
        self, request: CacheRequest, answer: Answer, plan: Plan, requested_by: tracing.SpanContext
    ) -> asyncio.Task[None] | None:
        """Write ``answer`` back in the background (the caller never waits); None when not storing.

        Traced in the trace of the request that computed the answer (``requested_by``): the
        response did not wait for it, so besides its parent it carries a link: the request
        caused it, but it is no part of the request's latency.
        """
        if not plan.store or self.breaker.state is not BreakerState.CLOSED:
            return None
        if not tracing.enabled():
            task = asyncio.ensure_future(self._store(request, answer, plan))
        else:
            span = tracing.start(
                "gateway.cache_write_back",
                {tracing.TASK: request.task, tracing.NAMESPACE: request.namespace},
                links=(requested_by,),
                parent=requested_by,
            )
            with tracing.use(span):
                task = asyncio.ensure_future(self._store(request, answer, plan))
            task.add_done_callback(lambda _: span.end())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    async def _store(self, request: CacheRequest, answer: Answer, plan: Plan) -> None:
        epoch = self.hot.epoch
        try:
            stored: StoredEntry = await self._cache.store(
                request, answer, ttl_s=plan.ttl_s, exact_only=plan.exact_only, timeout_s=self._config.store_timeout_s
            )
        except CacheError as exc:
            if exc.counts_as_failure:
                self.breaker.failure()
            self._observer.store("error")
            log.warning("cache write-back failed: %s", exc)
            return
        self._observer.store("ok")
        # Our own answer is the freshest there is: the next identical request is a hot hit.
        self.hot.put(request, CachedEntry(answer, stored.key, time.time(), stored.expires_at), epoch)

    async def entries(self, namespace: str, timeout_s: float = 0.5) -> int | None:
        try:
            return await self._cache.entries(namespace, timeout_s)
        except CacheError as exc:
            log.info("cache stats unavailable: %s", exc)
            return None

    async def watch_invalidations(self) -> AsyncIterator[Invalidation]:
        """Keep the hot layer coherent: follow the cache's invalidation stream forever.

        Each event is applied to the hot layer, then yielded (for what else holds answers).
        The layer serves only while subscribed; every (re)subscription starts it
        from empty, since events may have been missed in between.
        """
        if not self.hot.enabled:
            return
        while True:
            try:
                async for event in self._cache.watch_invalidations(on_open=self._on_watch_open):
                    removed = self.hot.invalidate(event)
                    yield event
                    self._observer.invalidation(event.kind.value, removed)
                delay = self._config.watch_retry_s
                log.info("invalidation stream ended; hot layer off until it is back")
            except CacheError as exc:
                unimplemented = exc.code == "UNIMPLEMENTED"
                delay = self._config.watch_unimplemented_retry_s if unimplemented else self._config.watch_retry_s
                log.log(
                    logging.INFO if unimplemented else logging.WARNING,
                    "no invalidation stream (%s); hot layer off, retrying in %.0fs",
                    exc,
                    delay,
                )
            finally:
                self.hot.deactivate()
            await asyncio.sleep(delay)

    def _on_watch_open(self) -> None:
        self.hot.activate()
        log.info("invalidation stream connected; hot layer on")

    async def close(self) -> None:
        """Let pending write-backs finish (they are short), so nothing computed is lost."""
        if self._writes:
            await asyncio.wait(self._writes, timeout=self._config.store_timeout_s + 1)
