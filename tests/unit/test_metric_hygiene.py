"""Metric hygiene: names carry their unit, latency histograms resolve a 0.5 ms hit and a 30 s chat,
no label can grow with request content, and tenants are a label only up to the configured count."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import cache_svc.metrics  # noqa: F401  (registers the cache metrics)
import inference_svc.metrics  # noqa: F401
from gateway import metrics as gateway_metrics
from gateway.core.types import CacheInfo, CacheStatus
from reprise.rpc import metrics as rpc_metrics

#: Labels whose values are bounded by the code (enums, RPC names, stages), never by callers.
BOUNDED_LABELS = {"service", "method", "code", "task", "status", "hot", "result", "state", "kind", "tier", "source",
                  "reason", "stage", "semantic", "target", "limit", "le"}
#: Histograms of a whole request or call: they must resolve both ends.
REQUEST_LATENCY = {
    "reprise_rpc_latency_seconds", "reprise_gateway_request_seconds", "reprise_gateway_cache_lookup_seconds",
    "reprise_gateway_model_call_seconds",
}
UNITS = ("_seconds", "_bytes", "_total", "_ratio", "_tokens_per_second", "_size", "_entries", "_vectors", "_depth",
         "_capacity", "_streams", "_state", "_active", "_in_flight", "_watchers", "_serving")


def _families() -> Iterator[object]:
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        # prometheus_client's *_created series (when a counter started) are bookkeeping, not metrics.
        if family.name.startswith("reprise") and not family.name.endswith("_created"):
            yield family


def test_every_name_says_its_unit_or_what_it_counts() -> None:
    names = {f.name for f in _families()}
    assert len(names) > 30
    for family in _families():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert re.fullmatch(r"reprise_[a-z_]+", name), name
        assert name.endswith(UNITS) or name == "reprise_serving", name
        if "latency" in name or "time" in name:
            assert name.endswith("_seconds"), name


def test_no_label_is_unbounded() -> None:
    declared = [c for c in REGISTRY._collector_to_names if getattr(c, "_labelnames", ())]  # type: ignore[attr-defined]
    assert len(declared) > 15
    for collector in declared:
        assert set(collector._labelnames) <= BOUNDED_LABELS, (collector._name, collector._labelnames)
    for family in _families():  # the collectors read at scrape time
        for sample in family.samples:
            unbounded = set(sample.labels) - BOUNDED_LABELS
            if family.name == "reprise_gateway_tenant_requests":
                unbounded -= {"tenant"}
            assert not unbounded, f"{family.name}: {unbounded}"


@pytest.mark.parametrize("name", sorted(REQUEST_LATENCY))
def test_request_latency_buckets_cover_a_half_millisecond_hit_and_a_thirty_second_chat(name: str) -> None:
    histogram = next(c for c in REGISTRY._collector_to_names if name in REGISTRY._collector_to_names[c])  # type: ignore[attr-defined]
    buckets = histogram._upper_bounds  # type: ignore[attr-defined]
    assert min(buckets) <= 0.0005 and 30.0 <= max(b for b in buckets if b != float("inf"))
    assert buckets == list(rpc_metrics.LATENCY_BUCKETS) + [float("inf")]


class _Gateway:
    """What the level collector reads from a gateway, with many tenants."""

    def __init__(self, tenants: int) -> None:
        from gateway.core.stats import Counters

        self.counters = Counters()
        for i in range(tenants):
            for _ in range(i + 1):
                self.counters.count(f"tenant-{i:02d}", CacheInfo(CacheStatus.EXACT if i % 2 else CacheStatus.MISS))

    def per_tenant(self):  # type: ignore[no-untyped-def]
        return self.counters.per_tenant()


def _tenant_samples(tenants: int, limit: int) -> dict[tuple[str, str], float]:
    collector = gateway_metrics._LevelCollector()
    collector.max_tenant_labels = limit
    gw = _Gateway(tenants)
    family = collector._per_tenant([gw])  # type: ignore[list-item]
    return {(s.labels["tenant"], s.labels["status"]): s.value for s in family.samples if s.labels["status"] in ("exact", "miss")}


def test_tenants_past_the_configured_count_are_summed_as_other() -> None:
    samples = _tenant_samples(tenants=30, limit=5)
    tenants = {t for t, _ in samples}
    assert tenants == {f"tenant-{i:02d}" for i in range(5)} | {gateway_metrics.OTHER_TENANTS}
    assert sum(samples.values()) == sum(range(1, 31)), "no request is lost by the folding"
    # Within the limit every tenant is named; zero names none.
    assert {t for t, _ in _tenant_samples(tenants=3, limit=5)} == {"tenant-00", "tenant-01", "tenant-02"}
    assert {t for t, _ in _tenant_samples(tenants=3, limit=0)} == {gateway_metrics.OTHER_TENANTS}
