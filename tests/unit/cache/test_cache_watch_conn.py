"""Watch-stream fan-out and Redis URL handling, without a network."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from cache_svc.core.store import Event
from cache_svc.core.types import Invalidation, InvalidationKind
from cache_svc.core.watch import InvalidationHub
from cache_svc.redis_conn import RedisOptions, connect, hint
from reprise.errors import ResourceExhausted, Unavailable

INV = Invalidation(InvalidationKind.KEY, "k1")


async def _collect(watcher, n: int) -> list:  # type: ignore[no-untyped-def]
    out = []
    async for item in watcher:
        out.append(item)
        if len(out) == n:
            break
    return out


async def test_every_watcher_gets_every_event_and_close_ends_streams() -> None:
    hub = InvalidationHub()
    w1, w2 = hub.watch(), hub.watch()
    hub.publish(INV)
    hub.publish(Invalidation(InvalidationKind.NAMESPACE, "t"))
    assert [i.value for i in await _collect(w1, 2)] == ["k1", "t"]
    w1.close()  # what the servicer does when its client goes away
    assert len(hub) == 1
    hub.close()
    assert [i.value async for i in w2] == ["k1", "t"]  # drained, then ended cleanly
    assert len(hub) == 0
    with pytest.raises(Unavailable):
        hub.watch()


async def test_slow_watcher_is_ended_not_silently_skipped() -> None:
    hub = InvalidationHub(max_backlog=2)
    w = hub.watch()
    for _ in range(3):
        hub.publish(INV)
    with pytest.raises(ResourceExhausted):
        await _collect(w, 10)


async def test_interrupt_tells_watchers_to_resubscribe() -> None:
    hub = InvalidationHub()
    w = hub.watch()
    hub.interrupt()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(_collect(w, 1), 1)


def test_watcher_limit() -> None:
    hub = InvalidationHub(max_watchers=1)
    hub.watch()
    with pytest.raises(ResourceExhausted):
        hub.watch()


@pytest.mark.parametrize(
    "event",
    [
        Event("r1", stored="abc", namespace="t", semantic=True),
        Event("r1", invalidation=INV),
        Event("r2", invalidation=Invalidation(InvalidationKind.MODEL, "qwen", "rev2")),
        Event("r2", invalidation=Invalidation(InvalidationKind.MODEL, "qwen", None)),
    ],
)
def test_event_round_trip(event: Event) -> None:
    assert Event.decode(event.encode()) == event


async def test_redis_urls() -> None:
    plain = connect(RedisOptions("redis://:secret@127.0.0.1:6390/2"))
    kw = plain.connection_pool.connection_kwargs
    assert kw["password"] == "secret" and kw["db"] == 2
    override = connect(RedisOptions("redis://:old@127.0.0.1:6390/0", password="new"))
    assert override.connection_pool.connection_kwargs["password"] == "new"
    tls = connect(RedisOptions("rediss://127.0.0.1:6390/0", tls_ca="/ca.pem"))
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    sentinel = connect(RedisOptions("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/1"))
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "mymaster"
    assert sentinel.connection_pool.connection_kwargs["db"] == 1
    cluster = connect(RedisOptions("redis+cluster://10.0.0.1:7000,10.0.0.2:7001"))
    assert isinstance(cluster, RedisCluster)
    with pytest.raises(ValueError):
        connect(RedisOptions("memcached://x"))
    for client in (plain, override, tls, sentinel):
        await client.aclose()


def test_connection_reset_hints_name_the_likely_tls_mistake() -> None:
    reset = "redis is unreachable: Error while reading from r:6380 : (104, 'Connection reset by peer')"
    assert "use a rediss:// URL" in hint(RedisOptions("redis://r:6380/0"), reset)
    no_cert = hint(RedisOptions("rediss://r:6380/0", tls_ca="/ca.pem"), reset)
    assert "--redis-tls-cert and --redis-tls-key" in no_cert
    assert hint(RedisOptions("rediss://r:6380/0", tls_ca="/ca.pem", tls_cert="/c.pem", tls_key="/c.key"), reset) == ""
    assert hint(RedisOptions("redis://r:6380/0"), "Error 111 connecting to r:6380. Connection refused.") == ""
