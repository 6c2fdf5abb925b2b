"""The cache service's domain API: validation, the lookup pipeline, store, invalidation, stats."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cache_svc.core.keys import exact_key
from cache_svc.core.normalize import Normalization
from cache_svc.core.store import RedisStore
from cache_svc.core.types import CacheQuery, Entry, LookupOptions, LookupResult, Stats, Tier
from reprise.domain import Answer
from reprise.errors import InvalidArgument, Unavailable


@dataclass(frozen=True)
class CacheConfig:
    default_ttl_s: int = 24 * 3600
    max_ttl_s: int = 30 * 24 * 3600
    max_text_chars: int = 32_000


def _validate(query: CacheQuery, config: CacheConfig) -> None:
    if not query.namespace:
        raise InvalidArgument("query.namespace", "must not be empty")
    if not query.task:
        raise InvalidArgument("query.task", "must not be empty")
    if not query.text.strip():
        raise InvalidArgument("query.text", "must not be empty")
    if len(query.text) > config.max_text_chars:
        raise InvalidArgument("query.text", f"is {len(query.text)} characters; the limit is {config.max_text_chars}")


class CacheService:
    def __init__(self, store: RedisStore, config: CacheConfig = CacheConfig(), normalize: Normalization = Normalization()) -> None:
        self._store = store
        self._config = config
        self._normalize = normalize
        self._counters = {"exact_hits": 0, "semantic_hits": 0, "misses": 0, "guard_rejections": 0}

    async def start(self) -> None:
        try:
            await self._store.ping()
        except Exception as exc:
            raise Unavailable(f"redis is unreachable: {exc}") from exc

    async def close(self) -> None:
        pass

    def key(self, query: CacheQuery) -> str:
        _validate(query, self._config)
        return exact_key(query, self._normalize)

    async def lookup(self, query: CacheQuery, options: LookupOptions) -> LookupResult:
        t0 = time.perf_counter()
        key = self.key(query)
        t1 = time.perf_counter()
        entry = await self._store.get(key)
        t2 = time.perf_counter()
        stages = {"normalize": (t1 - t0) * 1000, "exact": (t2 - t1) * 1000}
        now = time.time()
        if entry is not None and entry.namespace == query.namespace and entry.expires_at > now:
            if options.max_age_s is None or now - entry.created_at <= options.max_age_s:
                self._counters["exact_hits"] += 1
                return LookupResult(Tier.EXACT, key, 1.0, entry, stage_ms=stages)
        self._counters["misses"] += 1
        return LookupResult(Tier.MISS, key, stage_ms=stages)

    async def store(self, query: CacheQuery, answer: Answer, ttl_s: int | None, exact_only: bool) -> Entry:
        key = self.key(query)
        ttl = self._config.default_ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= self._config.max_ttl_s:
            raise InvalidArgument("ttl_seconds", f"must be in [1, {self._config.max_ttl_s}]")
        if answer.sentiment is None and answer.reply is None:
            raise InvalidArgument("answer", "must carry a sentiment or a reply")
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
        )
        await self._store.put(entry)
        return entry

    async def invalidate_key(self, key: str) -> int:
        return await self._store.delete(key)

    async def invalidate_namespace(self, namespace: str) -> int:
        return await self._store.delete_namespace(namespace)

    async def stats(self, namespace: str) -> Stats:
        names = [namespace] if namespace else await self._store.namespaces()
        by_ns = {n: await self._store.count(n) for n in names}
        return Stats(
            entries=sum(by_ns.values()),
            entries_by_namespace=by_ns,
            indexed_vectors=0,
            local_entries=0,
            redis_used_memory_bytes=await self._store.used_memory(),
            index_memory_bytes=0,
            embedder="",
            **self._counters,
        )
