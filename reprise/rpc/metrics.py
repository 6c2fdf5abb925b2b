"""Prometheus metrics shared by every service, and the HTTP endpoint that exposes them.

Service-specific metrics are defined in each service's own module with a
``reprise_<service>_`` prefix; the per-RPC ones here carry a ``service`` label
so three services in one test process never collide.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Buckets from 0.25 ms (a hot-cache hit) to 60 s (a long generation): both ends of what one
# histogram must resolve, a 0.5 ms exact hit and a 30 s chat (tests/unit/test_metric_hygiene.py).
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

RPC_REQUESTS = Counter(
    "reprise_rpc_requests_total", "RPCs handled, by final status code.", ["service", "method", "code"]
)
RPC_IN_FLIGHT = Gauge(
    "reprise_rpc_in_flight", "RPCs being handled now (accepted, not yet finished).", ["service", "method"]
)
RPC_LATENCY = Histogram(
    "reprise_rpc_latency_seconds", "RPC handling time.", ["service", "method"], buckets=LATENCY_BUCKETS
)

SERVING = Gauge(
    "reprise_serving",
    "1 while the service reports SERVING on its health endpoint (ready), 0 while not (starting, dependency down, draining).",
    ["service"],
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Expose /metrics on ``port`` (0 disables) from a daemon thread."""
    if port:
        start_http_server(port, addr=host)
