"""Redis as the source of truth for entries.

Layout (``{p}`` is the configured key prefix, default ``reprise``):

- ``{p}:e:{key}``: the entry as JSON, with the entry's TTL (Redis expires it).
- ``{p}:ns:{namespace}``: set of the namespace's keys (for invalidation and counts;
  members whose entry expired are pruned lazily).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache_svc.core.codec import decode_entry, encode_entry
from cache_svc.core.types import Entry
from reprise.errors import Unavailable

P = ParamSpec("P")
R = TypeVar("R")


def _redis_errors_unavailable(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Redis being down is a dependency outage (UNAVAILABLE, retryable), not a bug."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except RedisError as exc:
            raise Unavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc

    return wrapper


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "reprise") -> None:
        self._r = client
        self._p = prefix

    def _entry_key(self, key: str) -> str:
        return f"{self._p}:e:{key}"

    def _ns_key(self, namespace: str) -> str:
        return f"{self._p}:ns:{namespace}"

    @_redis_errors_unavailable
    async def ping(self) -> None:
        await self._r.ping()

    @_redis_errors_unavailable
    async def get(self, key: str) -> Entry | None:
        raw = await self._r.get(self._entry_key(key))
        return decode_entry(raw) if raw is not None else None

    @_redis_errors_unavailable
    async def put(self, entry: Entry) -> None:
        ttl_ms = max(1, int((entry.expires_at - time.time()) * 1000))
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._entry_key(entry.key), encode_entry(entry), px=ttl_ms)
            pipe.sadd(self._ns_key(entry.namespace), entry.key)
            await pipe.execute()

    @_redis_errors_unavailable
    async def delete(self, key: str) -> int:
        raw = await self._r.getdel(self._entry_key(key))
        if raw is None:
            return 0
        await self._r.srem(self._ns_key(decode_entry(raw).namespace), key)
        return 1

    @_redis_errors_unavailable
    async def delete_namespace(self, namespace: str) -> int:
        keys = await self._r.smembers(self._ns_key(namespace))
        removed = 0
        if keys:
            removed = await self._r.delete(*(self._entry_key(k.decode() if isinstance(k, bytes) else k) for k in keys))
        await self._r.delete(self._ns_key(namespace))
        return removed

    @_redis_errors_unavailable
    async def namespaces(self) -> list[str]:
        out = []
        async for k in self._r.scan_iter(match=f"{self._p}:ns:*", count=1000):
            name = k.decode() if isinstance(k, bytes) else k
            out.append(name[len(self._p) + 4 :])
        return out

    @_redis_errors_unavailable
    async def count(self, namespace: str) -> int:
        return int(await self._r.scard(self._ns_key(namespace)))

    @_redis_errors_unavailable
    async def used_memory(self) -> int:
        info = await self._r.info("memory")
        return int(info.get("used_memory", 0))
