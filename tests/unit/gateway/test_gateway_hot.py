"""Hot-key layer: serving rules, coherence with invalidations, bounds."""

from __future__ import annotations

from gateway.core.hot import HotConfig, HotLayer
from gateway.core.types import CachedEntry, CacheRequest, Invalidation, InvalidationKind, ModelIdentity, Prompt
from reprise.domain import Answer

M1 = ModelIdentity("m", "r1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def req(text: str, ns: str = "a", model: ModelIdentity = M1) -> CacheRequest:
    return CacheRequest(namespace=ns, task="chat", model=model, prompt=Prompt(text))


def entry(key: str, clock: Clock, ttl: float = 100.0) -> CachedEntry:
    return CachedEntry(Answer(reply=key), key, clock.now, clock.now + ttl)


def layer(max_entries: int = 100, max_age_s: float = 30.0) -> tuple[HotLayer, Clock]:
    clock = Clock()
    hot = HotLayer(HotConfig(max_entries, max_age_s), clock)
    hot.activate()
    return hot, clock


def test_serves_only_while_active() -> None:
    hot, clock = layer()
    assert hot.put(req("x"), entry("k1", clock), hot.epoch)
    assert hot.get(req("x")) is not None
    hot.deactivate()
    assert hot.get(req("x")) is None
    assert not hot.put(req("x"), entry("k1", clock), hot.epoch)
    hot.activate()
    assert hot.get(req("x")) is None  # (re)activation starts from empty


def test_expiry_max_age_and_hot_age_bound() -> None:
    hot, clock = layer(max_age_s=30)
    hot.put(req("x"), entry("k1", clock, ttl=10), hot.epoch)
    clock.now += 5
    assert hot.get(req("x"), max_age_s=4) is None  # too old for this caller
    assert hot.get(req("x"), max_age_s=6) is not None
    clock.now += 6
    assert hot.get(req("x")) is None  # past the cache entry's expires_at
    hot.put(req("y"), entry("k2", clock, ttl=1_000), hot.epoch)
    clock.now += 31
    assert hot.get(req("y")) is None  # past the hot layer's own bound: ask the cache again ...
    assert hot.get(req("y"), stale_ok=True) is not None  # ... but usable if the cache cannot answer
    clock.now += 1_000
    assert hot.get(req("y"), stale_ok=True) is None  # never past the entry's own expiry


def test_an_invalidation_during_the_lookup_wins() -> None:
    hot, clock = layer()
    epoch = hot.epoch  # a lookup starts
    hot.invalidate(Invalidation(InvalidationKind.KEY, "k1"))  # the entry is invalidated meanwhile
    assert not hot.put(req("x"), entry("k1", clock), epoch)  # the stale answer is not kept
    assert hot.get(req("x")) is None


def test_invalidate_by_key_namespace_and_model() -> None:
    hot, clock = layer()
    m2 = ModelIdentity("m", "r2")
    hot.put(req("x", "a"), entry("k1", clock), hot.epoch)
    hot.put(req("X ", "a"), entry("k1", clock), hot.epoch)  # another spelling, same cache key
    hot.put(req("y", "b"), entry("k2", clock), hot.epoch)
    hot.put(req("z", "b", m2), entry("k3", clock), hot.epoch)
    assert hot.invalidate(Invalidation(InvalidationKind.KEY, "k1")) == 2
    assert hot.get(req("x", "a")) is None and hot.get(req("X ", "a")) is None
    assert hot.invalidate(Invalidation(InvalidationKind.MODEL, "m", "r2")) == 1
    assert hot.get(req("y", "b")) is not None
    assert hot.invalidate(Invalidation(InvalidationKind.NAMESPACE, "b")) == 1
    assert len(hot) == 0
    hot.put(req("w"), entry("k4", clock), hot.epoch)
    assert hot.invalidate(Invalidation(InvalidationKind.MODEL, "m")) == 1  # every revision


def test_lru_bound() -> None:
    hot, clock = layer(max_entries=2)
    hot.put(req("a"), entry("ka", clock), hot.epoch)
    hot.put(req("b"), entry("kb", clock), hot.epoch)
    assert hot.get(req("a")) is not None  # a is now the most recent
    hot.put(req("c"), entry("kc", clock), hot.epoch)
    assert len(hot) == 2
    assert hot.get(req("b")) is None and hot.get(req("a")) is not None
    # the evicted entry's key no longer maps to anything
    assert hot.invalidate(Invalidation(InvalidationKind.KEY, "kb")) == 0


def test_disabled_layer_never_activates() -> None:
    hot = HotLayer(HotConfig(max_entries=0))
    hot.activate()
    assert not hot.active
