"""What tracing costs: exact-hit throughput through gateways with tracing on vs off, in one run.

The traced gateways are the same build and flags as the untraced ones, started
with the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``; the shipped
sampler, and for the hot layer also every request sampled) and exporting to
:func:`otlp_sink`, a real OTLP/gRPC endpoint in this process that counts what
it receives, so serialization and export are paid as against a collector.
Rounds rotate through the variants so drift in the shared machine's load falls
on all of them.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.loadgen.config import LoadConfig
from devtools.devstack import free_port

#: Tracing on costs at most this share of exact-hit throughput (issue 26).
MAX_COST = 0.05


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 (gRPC's name)
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def otlp_sink() -> Iterator[tuple[str, _Sink]]:
    """An OTLP/gRPC trace endpoint on loopback: ``(http://127.0.0.1:port, sink)``."""
    sink = _Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", sink
    finally:
        server.stop(0)


#: The variants measured against "off": the shipped sampler (reprise.tracing.DEFAULT_SAMPLE_RATIO),
#: and every request traced.
SHIPPED = "on"
EVERY = "on, every request"


def traced_env(endpoint: str, service: str, every_request: bool = False) -> dict[str, str]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": service}
    if every_request:
        env["OTEL_TRACES_SAMPLER"] = "always_on"
    return env


def compare(
    name: str,
    targets: dict[str, str],
    load: LoadConfig,
    *,
    rounds: int,
    measure: Callable[[LoadConfig], dict[str, object]],
) -> dict[str, object]:
    """``rounds`` of one run of ``load`` per variant (``targets``: "off" and the traced ones -> address);
    throughput of each traced variant over "off", medians over rounds."""
    sides = list(targets)
    rows: dict[str, list[dict[str, object]]] = {k: [] for k in sides}
    for i in range(rounds):
        for side in sides[i % len(sides):] + sides[: i % len(sides)]:  # rotate who goes first
            rows[side].append(measure(load.with_overrides(name=f"{name}, tracing {side}", host=targets[side])))
    rps = {k: statistics.median(float(r["rps"]) for r in v) for k, v in rows.items()}  # type: ignore[arg-type]
    p50 = {k: statistics.median(float(r["p50_ms"]) for r in v) for k, v in rows.items()}  # type: ignore[arg-type]
    return {
        "name": name,
        "in_flight": load.concurrency,
        "rounds": rounds,
        "requests_per_round": load.total,
        "rps_median": {k: round(v, 1) for k, v in rps.items()},
        "rps_rounds": {k: [r["rps"] for r in v] for k, v in rows.items()},
        "p50_ms_median": {k: round(v, 3) for k, v in p50.items()},
        "over_off": {k: round(rps[k] / rps["off"], 4) if rps["off"] else None for k in sides if k != "off"},
        "errors": {k: [r["errors"] for r in v if r["errors"]] for k, v in rows.items()},
    }
