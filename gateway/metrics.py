"""Prometheus metrics of the gateway (``reprise_gateway_`` prefix), served on --metrics-port.

Events (requests, lookups, write-backs, model calls) are counted as they
happen through :class:`PrometheusObserver`; levels (in flight, breaker state,
hot-layer size, hit ratio) are read from the live gateways at scrape time by
one collector, so the request path pays nothing for them. Per-RPC counts and
latencies by status code come from the shared interceptor
(``reprise_rpc_*{service="gateway"}``).

Cardinality stays bounded: no metric is labelled by request content, and the
one labelled by tenant (``reprise_gateway_tenant_requests_total``) names at most
``max_tenant_labels`` tenants, the first ones seen; later tenants are summed
under ``tenant="_other"`` (a tenant never moves between the two, so rates stay
right). Latency histograms share :data:`reprise.rpc.metrics.LATENCY_BUCKETS`.

Hit ratio per tier over any window, in PromQL::

    sum by (status) (rate(reprise_gateway_requests_total[5m]))
      / ignoring(status) group_left sum(rate(reprise_gateway_requests_total[5m]))
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.core.breaker import BreakerState
from gateway.core.flow import Gateway
from reprise.rpc.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "reprise_gateway_requests_total",
    "Answered requests by task, cache status and whether the hot layer served them (Analyze counts per part).",
    ["task", "status", "hot"],
)
REQUEST_SECONDS = Histogram(
    "reprise_gateway_request_seconds", "Time to answer, by task and cache status.", ["task", "status"], buckets=LATENCY_BUCKETS
)
LOOKUPS = Counter(
    "reprise_gateway_cache_lookups_total",
    "Cache lookups by result: hot, exact, semantic, miss, error, timeout, rejected, skipped.",
    ["result"],
)
LOOKUP_SECONDS = Histogram(
    "reprise_gateway_cache_lookup_seconds", "Cache lookup time (hot layer or cache round trip).", ["result"], buckets=LATENCY_BUCKETS
)
WRITES = Counter("reprise_gateway_cache_writes_total", "Write-backs to the cache by result: ok, error.", ["result"])
BREAKER_TRANSITIONS = Counter(
    "reprise_gateway_breaker_transitions_total", "Circuit breaker state changes, by new state.", ["state"]
)
COALESCED = Counter(
    "reprise_gateway_coalesced_total", "Requests that joined an identical request in flight (its cache lookup and model call).", ["task"]
)
MODEL_CALLS = Counter("reprise_gateway_model_calls_total", "Model calls made (misses after singleflight).", ["task"])
MODEL_SECONDS = Histogram(
    "reprise_gateway_model_call_seconds", "Model call time seen from the gateway.", ["task"], buckets=LATENCY_BUCKETS
)
INVALIDATIONS = Counter(
    "reprise_gateway_invalidations_total", "Invalidation events received from the cache, by kind.", ["kind"]
)
HOT_REMOVED = Counter("reprise_gateway_hot_removed_total", "Hot-layer entries dropped by invalidation events.")
ROUTES = Counter(
    "reprise_gateway_inference_routes_total",
    "Inference calls by how the replica was chosen: home (the conversation's own), spill (its own was over "
    "the load bound), failover (its own was down), spread (no conversation: least loaded).",
    ["kind"],
)


def inference_route(kind: str) -> None:
    """Count one routed inference call (``--inference-routing prefix``)."""
    ROUTES.labels(kind).inc()

_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: Tenants named in ``reprise_gateway_tenant_requests_total`` unless the gateway is told otherwise.
DEFAULT_MAX_TENANT_LABELS = 20
OTHER_TENANTS = "_other"


class PrometheusObserver:
    """:class:`~gateway.core.ports.Observer` that counts into the metrics above."""

    def __init__(self) -> None:
        # Label children resolved once: .labels() is a dict lookup under a lock per call.
        self._requests: dict[tuple[str, str, bool], Counter] = {}
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._lookups: dict[str, tuple[Counter, Histogram]] = {}

    def request(self, task: str, status: str, hot: bool, seconds: float) -> None:
        key = (task, status, hot)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = REQUESTS.labels(task, status, "true" if hot else "false")
        counter.inc()
        lk = (task, status)
        hist = self._latency.get(lk)
        if hist is None:
            hist = self._latency[lk] = REQUEST_SECONDS.labels(task, status)
        hist.observe(seconds)

    def lookup(self, result: str, seconds: float) -> None:
        children = self._lookups.get(result)
        if children is None:
            children = self._lookups[result] = (LOOKUPS.labels(result), LOOKUP_SECONDS.labels(result))
        children[0].inc()
        if result != "skipped":
            children[1].observe(seconds)

    def store(self, result: str) -> None:
        WRITES.labels(result).inc()

    def breaker(self, state: str) -> None:
        BREAKER_TRANSITIONS.labels(state).inc()

    def coalesced(self, task: str) -> None:
        COALESCED.labels(task).inc()

    def model_call(self, task: str, seconds: float) -> None:
        MODEL_CALLS.labels(task).inc()
        MODEL_SECONDS.labels(task).observe(seconds)

    def invalidation(self, kind: str, removed: int) -> None:
        INVALIDATIONS.labels(kind).inc()
        HOT_REMOVED.inc(removed)


class _LevelCollector(Collector):
    """Levels of every live gateway in this process, read at scrape time."""

    def __init__(self) -> None:
        self.gateways: weakref.WeakSet[Gateway] = weakref.WeakSet()
        self.max_tenant_labels = DEFAULT_MAX_TENANT_LABELS

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gws = list(self.gateways)
        yield GaugeMetricFamily("reprise_gateway_in_flight", "Requests in flight.", value=sum(g.requests.in_flight for g in gws))
        yield GaugeMetricFamily(
            "reprise_gateway_model_in_flight", "Model calls in flight.", value=sum(g.model_calls.in_flight for g in gws)
        )
        rejected = CounterMetricFamily(
            "reprise_gateway_rejected_overload", "Requests refused with RESOURCE_EXHAUSTED, by limit.", labels=["limit"]
        )
        rejected.add_metric(["requests"], sum(g.requests.rejected for g in gws))
        rejected.add_metric(["model_calls"], sum(g.model_calls.rejected for g in gws))
        yield rejected
        yield GaugeMetricFamily(
            "reprise_gateway_breaker_state",
            "Circuit breaker in front of the cache: 0 closed, 1 half-open, 2 open (worst replica in process).",
            value=max((_BREAKER_VALUE[g.front.breaker.state] for g in gws), default=0),
        )
        yield GaugeMetricFamily("reprise_gateway_hot_entries", "Entries in the hot-key layer.", value=sum(len(g.front.hot) for g in gws))
        yield GaugeMetricFamily(
            "reprise_gateway_hot_active",
            "1 while the hot-key layer serves (invalidation stream connected).",
            value=float(any(g.front.hot.active for g in gws)),
        )
        ratio = GaugeMetricFamily(
            "reprise_gateway_hit_ratio", "Share of answered requests served by each tier since start.", labels=["tier"]
        )
        totals = [g.totals() for g in gws]
        n = sum(t.requests for t in totals)
        for tier, hits in (
            ("exact", sum(t.exact_hits for t in totals)),
            ("semantic", sum(t.semantic_hits for t in totals)),
            ("hot", sum(t.hot_hits for t in totals)),
        ):
            ratio.add_metric([tier], hits / n if n else 0.0)
        yield ratio
        yield self._per_tenant(gws)

    def _per_tenant(self, gws: list[Gateway]) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "reprise_gateway_tenant_requests",
            f"Answered requests per tenant by cache status (hot hits count as exact); tenants past the first "
            f"{self.max_tenant_labels} seen are summed as {OTHER_TENANTS}.",
            labels=["tenant", "status"],
        )
        sums: dict[tuple[str, str], int] = {}
        for g in gws:
            for i, (tenant, t) in enumerate(g.per_tenant()):
                name = tenant if i < self.max_tenant_labels else OTHER_TENANTS
                for status, value in (("exact", t.exact_hits), ("semantic", t.semantic_hits), ("miss", t.misses), ("bypass", t.bypassed)):
                    sums[name, status] = sums.get((name, status), 0) + value
        for (tenant, status), value in sums.items():
            family.add_metric([tenant, status], value)
        return family


_LEVELS = _LevelCollector()
REGISTRY.register(_LEVELS)


def track(gateway: Gateway, max_tenant_labels: int | None = None) -> None:
    """Include ``gateway`` in the level metrics while it lives (and set the tenant label bound)."""
    _LEVELS.gateways.add(gateway)
    if max_tenant_labels is not None:
        _LEVELS.max_tenant_labels = max(0, max_tenant_labels)
