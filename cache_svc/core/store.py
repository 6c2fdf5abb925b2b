"""Redis as the source of truth: entries, their embeddings, index sets and the event channel.

Layout (``{p}`` is the configured key prefix, default ``reprise``):

- ``{p}:e:{key}``: a hash with the entry as JSON (field ``d``) and, for entries in
  the semantic tier, its embedding as float32 bytes (field ``v``). Redis expires
  it at the entry's ``expires_at`` (PEXPIREAT), so Redis alone decides lifetime.
- ``{p}:ns:{namespace}`` and ``{p}:m:{model_id}``: sorted sets of keys scored by
  ``expires_at``: namespace/model invalidation and entry counts without SCAN.
  Members of expired entries are pruned by score.
- ``{p}:events``: pub/sub channel on which every replica announces stores and
  invalidations (JSON, see :class:`Event`).

Every write touches keys in different hash slots one command at a time (never
MULTI), so the same code runs on a Redis Cluster. The index sets are written
before the entry: a crash in between leaves a harmless dangling member, never an
entry that namespace invalidation cannot find.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
from redis.exceptions import RedisError

from cache_svc.core.codec import decode_entry, decode_vector, encode_entry, encode_vector
from cache_svc.core.types import Entry, Invalidation, InvalidationKind
from reprise.errors import Unavailable

P = ParamSpec("P")
R = TypeVar("R")

_BATCH = 500


def redis_errors_unavailable(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Redis being down is a dependency outage (UNAVAILABLE, retryable), not a bug."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc

    return wrapper


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True, slots=True)
class Event:
    """What one replica tells the others over pub/sub.

    ``stored`` carries the key of a new or replaced entry (the others drop their
    local copy and, when ``semantic``, index its embedding from Redis);
    ``invalidation`` carries an explicit invalidation.
    """

    origin: str
    stored: str | None = None
    namespace: str = ""
    semantic: bool = False
    invalidation: Invalidation | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"o": self.origin}
        if self.stored is not None:
            doc.update(op="put", key=self.stored, ns=self.namespace, sem=self.semantic)
        elif self.invalidation is not None:
            inv = self.invalidation
            doc.update(op="inv", kind=inv.kind.value, value=inv.value, rev=inv.model_revision)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    @staticmethod
    def decode(raw: bytes | str) -> Event:
        d = json.loads(raw)
        if d.get("op") == "put":
            return Event(d["o"], stored=d["key"], namespace=d.get("ns", ""), semantic=bool(d.get("sem")))
        if d.get("op") == "inv":
            return Event(d["o"], invalidation=Invalidation(InvalidationKind(d["kind"]), d["value"], d.get("rev")))
        raise ValueError(f"unknown event {d.get('op')!r}")


class RedisStore:
    """Entries, embeddings and events in Redis (standalone, Sentinel-managed or Cluster)."""

    def __init__(self, client: Any, prefix: str = "reprise") -> None:
        self._r = client
        self._p = prefix
        self.channel = f"{prefix}:events"

    def _ek(self, key: str) -> str:
        return f"{self._p}:e:{key}"

    def _nsk(self, namespace: str) -> str:
        return f"{self._p}:ns:{namespace}"

    def _mk(self, model_id: str) -> str:
        return f"{self._p}:m:{model_id}"

    @redis_errors_unavailable
    async def ping(self) -> None:
        await self._r.ping()

    @redis_errors_unavailable
    async def get(self, key: str) -> Entry | None:
        raw = await self._r.hget(self._ek(key), "d")
        return decode_entry(raw) if raw is not None else None

    @redis_errors_unavailable
    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        if len(keys) == 1:  # the common case: skip the pipeline's overhead
            raw = await self._r.hget(self._ek(keys[0]), "d")
            return [decode_entry(raw) if raw is not None else None]
        async with self._r.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hget(self._ek(k), "d")
            raws = await pipe.execute()
        return [decode_entry(r) if r is not None else None for r in raws]

    @redis_errors_unavailable
    async def get_with_vectors(self, keys: Sequence[str]) -> list[tuple[Entry, np.ndarray | None] | None]:
        async with self._r.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hmget(self._ek(k), ["d", "v"])
            rows = await pipe.execute()
        return [(decode_entry(d), decode_vector(v) if v is not None else None) if d is not None else None for d, v in rows]

    @redis_errors_unavailable
    async def put(self, entry: Entry, vector: np.ndarray | None) -> None:
        expire_ms = int(entry.expires_at * 1000)
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zadd(self._nsk(entry.namespace), {entry.key: entry.expires_at})
            pipe.zadd(self._mk(entry.model_id), {entry.key: entry.expires_at})
            await pipe.execute()
        fields: dict[str, bytes] = {"d": encode_entry(entry)}
        if vector is not None:
            fields["v"] = encode_vector(vector)
        async with self._r.pipeline(transaction=False) as pipe:
            # DEL first: a replaced entry must not keep the old embedding field.
            pipe.delete(self._ek(entry.key))
            pipe.hset(self._ek(entry.key), mapping=fields)
            pipe.pexpireat(self._ek(entry.key), expire_ms)
            await pipe.execute()

    async def put_many(self, items: Sequence[tuple[Entry, np.ndarray | None]]) -> None:
        """Bulk load (benchmarks, warm-up scripts): one pipeline per batch."""
        for i in range(0, len(items), _BATCH):
            async with self._r.pipeline(transaction=False) as pipe:
                for entry, vector in items[i : i + _BATCH]:
                    pipe.zadd(self._nsk(entry.namespace), {entry.key: entry.expires_at})
                    pipe.zadd(self._mk(entry.model_id), {entry.key: entry.expires_at})
                    fields: dict[str, bytes] = {"d": encode_entry(entry)}
                    if vector is not None:
                        fields["v"] = encode_vector(vector)
                    pipe.hset(self._ek(entry.key), mapping=fields)
                    pipe.pexpireat(self._ek(entry.key), int(entry.expires_at * 1000))
                await pipe.execute()

    async def _delete_keys(self, keys: Sequence[str]) -> int:
        removed = 0
        for i in range(0, len(keys), _BATCH):
            async with self._r.pipeline(transaction=False) as pipe:
                for k in keys[i : i + _BATCH]:
                    pipe.delete(self._ek(k))
                removed += sum(int(n) for n in await pipe.execute())
        return removed

    @redis_errors_unavailable
    async def delete(self, key: str) -> int:
        raw = await self._r.hget(self._ek(key), "d")
        if raw is None:
            return 0
        entry = decode_entry(raw)
        removed = int(await self._r.delete(self._ek(key)))
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zrem(self._nsk(entry.namespace), key)
            pipe.zrem(self._mk(entry.model_id), key)
            await pipe.execute()
        return removed

    @redis_errors_unavailable
    async def delete_namespace(self, namespace: str) -> int:
        keys = [_s(k) for k in await self._r.zrange(self._nsk(namespace), 0, -1)]
        removed = await self._delete_keys(keys)
        await self._r.delete(self._nsk(namespace))
        return removed

    @redis_errors_unavailable
    async def delete_model(self, model_id: str, revision: str | None) -> int:
        keys = [_s(k) for k in await self._r.zrange(self._mk(model_id), 0, -1)]
        if revision is not None:
            entries = await self.get_many(keys) if keys else []
            keys = [k for k, e in zip(keys, entries, strict=True) if e is not None and e.model_revision == revision]
        removed = await self._delete_keys(keys)
        if revision is None:
            await self._r.delete(self._mk(model_id))
        elif keys:
            await self._r.zrem(self._mk(model_id), *keys)
        return removed

    @redis_errors_unavailable
    async def namespaces(self) -> list[str]:
        start = len(self._p) + 4
        return sorted({_s(k)[start:] async for k in self._r.scan_iter(match=f"{self._p}:ns:*", count=1000)})

    @redis_errors_unavailable
    async def count(self, namespace: str) -> int:
        """Live entries of ``namespace`` (prunes members of expired entries first)."""
        now = time.time()
        await self._r.zremrangebyscore(self._nsk(namespace), "-inf", now)
        return int(await self._r.zcard(self._nsk(namespace)))

    @redis_errors_unavailable
    async def used_memory(self) -> int:
        info = await self._r.info("memory")
        if info and isinstance(next(iter(info.values())), dict):  # Cluster: one dict per node
            return sum(int(v.get("used_memory", 0)) for v in info.values())
        return int(info.get("used_memory", 0))

    async def scan_semantic(self) -> AsyncIterator[list[tuple[Entry, np.ndarray]]]:
        """Every live entry that has an embedding, in batches (rebuilding the indexes on start)."""
        batch: list[str] = []
        async for k in self._r.scan_iter(match=f"{self._p}:e:*", count=1000):
            batch.append(_s(k)[len(self._p) + 3 :])
            if len(batch) >= _BATCH:
                yield await self._with_vectors(batch)
                batch = []
        if batch:
            yield await self._with_vectors(batch)

    async def _with_vectors(self, keys: list[str]) -> list[tuple[Entry, np.ndarray]]:
        rows = await self.get_with_vectors(keys)
        return [(e, v) for row in rows if row is not None for e, v in [row] if v is not None]

    @redis_errors_unavailable
    async def publish(self, event: Event) -> None:
        await self._r.publish(self.channel, event.encode())

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Event]]:
        """Subscribe to the event channel; yields an iterator of events once subscribed."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)

            async def events() -> AsyncIterator[Event]:
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # A cancellation that lands as the read's own 1 s timeout fires can come back as that
                        # timeout (None): without this check the subscription would poll on forever and the
                        # service's close, which waits for it, would never return.
                        raise asyncio.CancelledError
                    if msg is None or msg.get("type") != "message":
                        continue
                    yield Event.decode(msg["data"])

            yield events()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
