"""The cache service's domain API: the lookup pipeline, store, invalidation, stats, replication.

Lookup is a pipeline of small stages, each timed (``stage_ms``):
normalize -> exact (local tier, then Redis) -> embed -> search -> fetch -> guard (verification).
A semantic candidate is served only once :mod:`.verify` has confirmed it is the
same request; the similarity threshold only decides which candidates are worth
verifying.
Redis is the source of truth: a semantic candidate is always re-read from Redis
before it is served, and the local exact tier is kept coherent by the pub/sub
events every replica publishes (see :mod:`.local` for the staleness bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from cache_svc.core.embedders import Embedder, EmbedQueue
from cache_svc.core.index import PartitionInfo, VectorIndex
from cache_svc.core.keys import exact_key, partition_key
from cache_svc.core.local import LocalTier
from cache_svc.core.normalize import Normalization
from cache_svc.core.observer import NullObserver, Observer
from cache_svc.core.simhash import simhash64
from cache_svc.core.store import Event, RedisStore
from cache_svc.core.types import (
    CacheQuery,
    Entry,
    Invalidation,
    InvalidationKind,
    LookupOptions,
    LookupResult,
    Stats,
    Tier,
)
from cache_svc.core.verify import Verifier
from cache_svc.core.watch import InvalidationHub, Watcher
from reprise.domain import Answer
from reprise.errors import InvalidArgument, Unavailable
from reprise.sampling import check_sampling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheConfig:
    default_ttl_s: int = 24 * 3600
    max_ttl_s: int = 30 * 24 * 3600
    max_text_chars: int = 32_000
    #: Cosine similarity a semantic candidate must reach, per task; ``default_threshold`` otherwise.
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: Only decides which candidates are worth verifying: verification decides what is served
    #: (below 0.80 no labelled paraphrase passed verification; see docs/cache.md).
    default_threshold: float = 0.8
    #: Lowest similarity a request's own ``min_similarity`` may ask for: below it the floor applies,
    #: so no caller can turn the semantic tier into "serve anything". Verification always runs.
    min_similarity_floor: float = 0.75
    #: Tasks whose requests may be answered semantically (empty: every task).
    semantic_tasks: frozenset[str] = frozenset()
    #: Requests with history are exact-only unless this is set: a paraphrase means
    #: the same thing only in the same conversation.
    semantic_with_history: bool = False
    #: Longer texts are exact-only: one sentence embedding cannot represent them.
    max_semantic_chars: int = 1_000
    top_k: int = 4
    #: Most texts embedded in one call when lookups arrive together (1: one at a time).
    embed_batch: int = 32
    local_max_entries: int = 10_000
    local_max_staleness_s: float = 5.0
    sweep_interval_s: float = 10.0
    #: How long start() waits for the Redis event subscription.
    subscribe_timeout_s: float = 10.0


def _validate(query: CacheQuery, config: CacheConfig) -> None:
    if not query.namespace:
        raise InvalidArgument("query.namespace", "must not be empty")
    if not query.task:
        raise InvalidArgument("query.task", "must not be empty")
    if not query.text.strip():
        raise InvalidArgument("query.text", "must not be empty")
    if len(query.text) > config.max_text_chars:
        raise InvalidArgument("query.text", f"is {len(query.text)} characters; the limit is {config.max_text_chars}")
    # The decoding is part of the key: a NaN temperature would be keyed (and stored) as if it meant something.
    check_sampling(query.decoding, "query.decoding")


def embedding_text(text: str) -> str:
    """What gets embedded: NFKC, collapsed whitespace, case folded.

    USE reads "HOW MANY TEASPOONS IN A TABLESPOON" as far from the same words in
    lower case (cosine 0.34); names are told apart by verification, not by case.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class _Clock:
    """Stage timer: ``lap(name)`` records the time since the previous lap."""

    def __init__(self, observer: Observer) -> None:
        self.stages: dict[str, float] = {}
        self._observer = observer
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        seconds = now - self._t
        self.stages[name] = self.stages.get(name, 0.0) + seconds * 1000
        self._observer.stage(name, seconds)
        self._t = now


class CacheService:
    def __init__(
        self,
        store: RedisStore,
        config: CacheConfig = CacheConfig(),
        *,
        embedder: Embedder | None = None,
        index: VectorIndex | None = None,
        guard: Verifier | None = None,
        normalize: Normalization = Normalization(),
        replica_id: str | None = None,
        embed_queue: EmbedQueue | None = None,
        observer: Observer | None = None,
    ) -> None:
        if (embedder is None) != (index is None):
            raise ValueError("the semantic tier needs both an embedder and an index")
        if index is not None and embedder is not None and index.dim != embedder.dim:
            raise ValueError(f"index dim {index.dim} != embedder dim {embedder.dim}")
        self._store = store
        self._config = config
        self._embedder = embedder
        # Shared with the verifier's word embeddings when the composition root passes one in.
        self._embed_queue = embed_queue or (EmbedQueue(embedder, config.embed_batch) if embedder is not None else None)
        self._index = index
        self._guard = guard
        self._normalize = normalize
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self._local = LocalTier(config.local_max_entries, config.local_max_staleness_s)
        self._hub = InvalidationHub()
        self._observer: Observer = observer or NullObserver()
        self._counters = {"exact_hits": 0, "semantic_hits": 0, "misses": 0, "guard_rejections": 0}
        self._subscribed = False
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe to the replicas' events, rebuild the semantic indexes from Redis."""
        try:
            await self._store.ping()
        except Unavailable as exc:
            raise Unavailable(f"redis is unreachable: {exc}") from exc
        follower = asyncio.create_task(self._follow_events(), name="cache-events")
        self._tasks.append(follower)
        try:
            await asyncio.wait_for(self._ready.wait(), self._config.subscribe_timeout_s)
        except TimeoutError:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            self._tasks.remove(follower)
            raise Unavailable("could not subscribe to the redis event channel") from None
        await self._rebuild()
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="cache-sweeper"))

    async def ping(self) -> None:
        """Raise :class:`Unavailable` when Redis does not answer."""
        await self._store.ping()

    async def close(self) -> None:
        self._hub.close()
        if self._embed_queue is not None:
            self._embed_queue.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def drain(self) -> None:
        """Shutdown has begun: end the watch streams so the server can stop without waiting."""
        self._hub.close()

    async def _rebuild(self) -> None:
        if self._index is None:
            return
        t0 = time.perf_counter()
        self._index.clear()
        n = 0
        now = time.time()
        async for batch in self._store.scan_semantic():
            items = [(e, v) for e, v in batch if e.semantic and e.expires_at > now and v.shape[0] == self._index.dim]
            await asyncio.to_thread(self._index_entries, items)
            n += len(items)
        log.info("semantic indexes rebuilt from redis: %d vectors in %.2fs", n, time.perf_counter() - t0)

    def _index_entries(self, items: list[tuple[Entry, object]]) -> None:
        assert self._index is not None
        by_part: dict[str, list[tuple[Entry, object]]] = {}
        for e, v in items:
            by_part.setdefault(e.partition, []).append((e, v))
        for part, rows in by_part.items():
            e0 = rows[0][0]
            info = PartitionInfo(e0.namespace, e0.model_id, e0.model_revision, e0.task)
            self._index.add(part, info, [(e.key, v, e.expires_at) for e, v in rows])  # type: ignore[misc]

    async def _follow_events(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                async with self._store.subscribe() as events:
                    # Events may have been missed while unsubscribed: start from Redis again.
                    self._local.clear()
                    if not first:
                        await self._rebuild()
                    first = False
                    self._subscribed = True
                    self._ready.set()
                    delay = 0.1
                    async for event in events:
                        await self._apply(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, failover, ...
                log.warning("redis event subscription lost: %s", exc)
            finally:
                if self._subscribed:
                    self._hub.interrupt()
                self._subscribed = False
                self._local.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _apply(self, event: Event) -> None:
        if event.stored is not None:
            self._observer.event("stored")
            if event.origin == self.replica_id:
                return
            self._local.drop(event.stored)
            if event.semantic and self._index is not None:
                rows = await self._store.get_with_vectors([event.stored])
                if rows[0] is not None and rows[0][1] is not None:
                    await asyncio.to_thread(self._index_entries, [rows[0]])  # type: ignore[list-item]
            return
        inv = event.invalidation
        if inv is None:
            return
        self._observer.event(inv.kind.value)
        await self._forget(inv)
        self._hub.publish(inv)

    async def _forget(self, inv: Invalidation) -> None:
        """Drop what this replica holds for an invalidation (local tier and indexes)."""
        if inv.kind is InvalidationKind.KEY:
            self._local.drop(inv.value)
            if self._index is not None:
                await asyncio.to_thread(self._index.remove_keys, [inv.value])
        elif inv.kind is InvalidationKind.NAMESPACE:
            self._local.drop_namespace(inv.value)
            if self._index is not None:
                await asyncio.to_thread(self._index.drop_where, inv.value)
        else:
            self._local.drop_model(inv.value, inv.model_revision)
            if self._index is not None:
                await asyncio.to_thread(self._index.drop_where, None, inv.value, inv.model_revision)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_interval_s)
            if self._index is not None:
                await asyncio.to_thread(self._index.sweep, time.time())

    # ---- requests --------------------------------------------------------------------------

    def key(self, query: CacheQuery) -> str:
        _validate(query, self._config)
        return exact_key(query, self._normalize)

    def semantic_eligible(self, query: CacheQuery) -> bool:
        c = self._config
        return (
            self._embedder is not None
            and (c.semantic_with_history or not query.history)
            and not query.image_digests
            and (not c.semantic_tasks or query.task in c.semantic_tasks)
            and len(query.text) <= c.max_semantic_chars
        )

    def threshold(self, task: str) -> float:
        return self._config.thresholds.get(task, self._config.default_threshold)

    @staticmethod
    def _servable(entry: Entry, now: float, options: LookupOptions) -> bool:
        return entry.expires_at > now and (options.max_age_s is None or now - entry.created_at <= options.max_age_s)

    async def lookup(self, query: CacheQuery, options: LookupOptions) -> LookupResult:
        clock = _Clock(self._observer)
        key = self.key(query)
        clock.lap("normalize")
        now = time.time()
        entry = self._local.get(key) if self._subscribed else None
        source = "local"
        if entry is None:
            entry = await self._store.get(key)
            source = "redis"
            if entry is not None and self._subscribed:
                self._local.put(entry)
        clock.lap("exact")
        if entry is not None and entry.namespace == query.namespace and self._servable(entry, now, options):
            self._count("exact_hits", Tier.EXACT)
            self._observer.exact_hit(source)
            return LookupResult(Tier.EXACT, key, 1.0, entry, stage_ms=clock.stages)
        if options.exact_only or not self.semantic_eligible(query):
            return self._miss(key, clock)
        return await self._semantic(query, key, options, clock)

    async def _semantic(self, query: CacheQuery, key: str, options: LookupOptions, clock: _Clock) -> LookupResult:
        assert self._embed_queue is not None and self._index is not None
        vector = await self._embed_queue.embed(embedding_text(query.text))
        clock.lap("embed")
        partition = partition_key(query, self._normalize)
        now = time.time()
        candidates = await asyncio.to_thread(self._index.search, partition, vector, self._config.top_k, now)
        clock.lap("search")
        threshold = self.threshold(query.task)
        if options.min_similarity is not None:
            threshold = max(options.min_similarity, self._config.min_similarity_floor)
        above = [c for c in candidates if c.similarity >= threshold]
        if not above:
            reason = f"best candidate {candidates[0].similarity:.3f} below threshold {threshold:.2f}" if candidates else ""
            return self._miss(key, clock, reason)
        entries = await self._store.get_many([c.key for c in above])
        clock.lap("fetch")
        gone = [c.key for c, e in zip(above, entries, strict=True) if e is None]
        if gone:  # expired or invalidated in Redis: the index was behind; never serve it
            await asyncio.to_thread(self._index.remove_keys, gone)
        reason = ""
        for cand, entry in zip(above, entries, strict=True):
            if entry is None or entry.namespace != query.namespace or not self._servable(entry, time.time(), options):
                continue
            if entry.key == key:
                # The same request, stored while this lookup ran (the exact read came
                # first): it is an exact hit, and must be reported as one.
                clock.lap("guard")
                self._count("exact_hits", Tier.EXACT)
                return LookupResult(Tier.EXACT, key, 1.0, entry, stage_ms=clock.stages)
            why = (
                await asyncio.to_thread(self._guard.check, query.text, entry.text, query.task)
                if self._guard is not None
                else None
            )
            if why is None:
                clock.lap("guard")
                self._count("semantic_hits", Tier.SEMANTIC)
                return LookupResult(Tier.SEMANTIC, key, cand.similarity, entry, stage_ms=clock.stages)
            reason = reason or why
            self._counters["guard_rejections"] += 1
            self._observer.rejected(why.split(" ")[0].rstrip(":"))
        clock.lap("guard")
        return self._miss(key, clock, reason)

    def _count(self, counter: str, tier: Tier) -> None:
        self._counters[counter] += 1
        self._observer.lookup(tier.value)

    def _miss(self, key: str, clock: _Clock, reason: str = "") -> LookupResult:
        self._count("misses", Tier.MISS)
        return LookupResult(Tier.MISS, key, rejected_reason=reason, stage_ms=clock.stages)

    async def store(self, query: CacheQuery, answer: Answer, ttl_s: int | None, exact_only: bool) -> Entry:
        key = self.key(query)
        ttl = self._config.default_ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= self._config.max_ttl_s:
            raise InvalidArgument("ttl_seconds", f"must be in [1, {self._config.max_ttl_s}]")
        if answer.sentiment is None and answer.reply is None:
            raise InvalidArgument("answer", "must carry a sentiment or a reply")
        if answer.sentiment is not None and not 0.0 <= answer.sentiment.probability <= 1.0:  # NaN fails too
            # Stored, it would be served to every caller who asks the same: refuse it here, where it comes in.
            raise InvalidArgument("answer.sentiment.probability", "must be a probability in [0, 1]")
        semantic = not exact_only and self.semantic_eligible(query)
        vector = None
        if semantic:
            assert self._embed_queue is not None
            vector = await self._embed_queue.embed(embedding_text(query.text))
        now = time.time()
        entry = Entry(
            key=key,
            namespace=query.namespace,
            task=query.task,
            text=query.text,
            answer=answer,
            model_id=query.model_id,
            model_revision=query.model_revision,
            created_at=now,
            expires_at=now + ttl,
            partition=partition_key(query, self._normalize),
            simhash=simhash64(self._normalize(query.text)),
            semantic=semantic,
        )
        await self._store.put(entry, vector)
        if self._subscribed:
            self._local.put(entry)
        if semantic:
            await asyncio.to_thread(self._index_entries, [(entry, vector)])
        self._observer.stored(semantic)
        await self._store.publish(Event(self.replica_id, stored=key, namespace=entry.namespace, semantic=semantic))
        return entry

    async def invalidate(self, inv: Invalidation) -> int:
        """Remove entries from Redis, then tell every replica (and every watcher) through pub/sub."""
        if inv.kind is InvalidationKind.KEY:
            if not inv.value:
                raise InvalidArgument("key", "must not be empty")
            removed = await self._store.delete(inv.value)
        elif inv.kind is InvalidationKind.NAMESPACE:
            if not inv.value:
                raise InvalidArgument("namespace", "must not be empty")
            removed = await self._store.delete_namespace(inv.value)
        else:
            if not inv.value:
                raise InvalidArgument("model.model_id", "must not be empty")
            removed = await self._store.delete_model(inv.value, inv.model_revision)
        # Apply locally now (read-your-writes); the event reaches the others and the watchers.
        await self._forget(inv)
        await self._store.publish(Event(self.replica_id, invalidation=inv))
        self._observer.invalidated(inv.kind.value, removed)
        return removed

    @property
    def watchers(self) -> int:
        """Open WatchInvalidations streams on this replica."""
        return len(self._hub)

    def watch(self) -> Watcher:
        """Register a WatchInvalidations stream (registered on return: nothing after it is missed)."""
        return self._hub.watch()

    def levels(self) -> dict[str, int]:
        """What a metrics scrape reads: vectors indexed, local-tier entries, open watch streams."""
        return {
            "indexed_vectors": len(self._index) if self._index is not None else 0,
            "local_entries": len(self._local),
            "watchers": self._hub.watchers,
        }

    async def stats(self, namespace: str) -> Stats:
        names = [namespace] if namespace else await self._store.namespaces()
        by_ns = {n: await self._store.count(n) for n in names}
        indexed = len(self._index) if self._index is not None else 0
        return Stats(
            entries=sum(by_ns.values()),
            entries_by_namespace={n: c for n, c in by_ns.items() if c or namespace},
            indexed_vectors=indexed,
            local_entries=len(self._local),
            redis_used_memory_bytes=await self._store.used_memory(),
            index_memory_bytes=self._index.memory_bytes() if self._index is not None else 0,
            embedder=self._embedder.name if self._embedder is not None else "",
            **self._counters,
        )
