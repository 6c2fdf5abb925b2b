"""Every metric the dashboard and the alert rules query is one the three services export.

The services run in-process (one prometheus_client registry between them, as
three pods are one Prometheus between them); after a request through the
gateway, the registry's text exposition (what /metrics serves) must name every
series the PromQL in deploy/k8s/monitoring selects.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.deploy.test_monitoring import dashboard_exprs, metric_names, rule_exprs

#: Series Prometheus itself makes, not the services.
_SYNTHETIC = {"up"}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "summary": ("_sum", "_count")}


def exported() -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        names.add(family.name)
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_metric_the_dashboard_and_alerts_query_is_exported(gateway_host, channel_to) -> None:
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))
    await stub.Classify(pb.ClassifyRequest(text="metrics for the dashboard, please"))
    await stub.Chat(pb.ChatRequest(text="one more for the chat panels"))
    have = exported()
    for source, exprs in (("dashboard", dashboard_exprs()), ("alert rules", rule_exprs())):
        queried = set().union(*(metric_names(e) for e in exprs))
        missing = queried - have - _SYNTHETIC
        assert not missing, f"{source} queries metrics no service exports: {sorted(missing)}"
    # The check can fail: a misspelt name is caught.
    assert "reprise_gateway_request_total" not in have
