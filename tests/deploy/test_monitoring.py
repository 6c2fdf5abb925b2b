"""The Grafana dashboard and the Prometheus alert rules in deploy/k8s/monitoring: structurally valid,
every PromQL expression parses (promql-parser, the Rust parser Prometheus-compatible databases use),
and the kustomization renders the dashboard ConfigMap Grafana's sidecar picks up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "k8s" / "monitoring"
DASHBOARD = MONITORING / "reprise-dashboard.json"
RULES = MONITORING / "prometheusrule.yaml"
K8S_VERSION = "1.37.0"

# Grafana's variables, replaced by what Grafana would put there before the query is sent.
_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def promql(expr: str) -> Any:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in re.sub(r'"[^"]*"', "", expr), f"an unknown variable outside a label value: {expr}"
    return promql_parser.parse(expr)


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql(expr), pre_visit=visit)
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    return [r["expr"] for r in rules()]


def test_promql_check_catches_a_broken_expression() -> None:
    with pytest.raises(ValueError):
        promql("sum(rate(reprise_rpc_requests_total[5m])")
    assert metric_names('sum(rate(a_total{x="$namespace"}[$__rate_interval])) / on() b') == {"a_total", "b"}


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # Grafana's label_values(selector, label): the selector is PromQL.
    selector = re.fullmatch(r"label_values\((.+), (\w+)\)", variables["namespace"]["definition"])
    assert selector is not None and selector[2] == "namespace"
    promql(selector[1])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "gauge", "table"}, p["type"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]


def test_dashboard_covers_what_an_operator_opens_it_for() -> None:
    queried = set().union(*(metric_names(e) for e in dashboard_exprs()))
    wanted = {
        "reprise_rpc_requests_total",  # request rate per RPC
        "reprise_rpc_latency_seconds_bucket",  # p50 / p99 per RPC
        "reprise_gateway_requests_total",  # hit ratio by tier
        "reprise_gateway_cache_lookups_total",  # cache bypass
        "reprise_gateway_breaker_state",
        "reprise_inference_queue_depth",
        "reprise_gateway_rejected_overload_total",  # admission refusals
        "reprise_inference_generated_tokens_total",  # tokens/s
        "reprise_inference_cached_tokens_total",  # KV reuse
        "process_resident_memory_bytes",  # memory
    }
    assert wanted <= queried, wanted - queried


def test_every_dashboard_expression_parses() -> None:
    for expr in dashboard_exprs():
        promql(expr)


def test_rules_are_a_valid_prometheus_rule_with_documented_thresholds() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"]
    header = RULES.read_text().split("apiVersion", 1)[0]
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert re.fullmatch(r"Reprise[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        expr = promql(rule["expr"])
        assert type(expr).__name__ == "BinaryExpr", f"{rule['alert']}: an alert compares against a threshold"
        assert promql_parser.parse_duration(rule["for"]).total_seconds() >= 60, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in header, f"{rule['alert']}: threshold not documented in the file's header"


def test_rules_cover_what_pages_people() -> None:
    names = {r["alert"] for r in rules()}
    assert {
        "RepriseGatewayErrors",  # error ratio
        "RepriseClassifyLatencyHigh",  # p99 over budget
        "RepriseChatLatencyHigh",
        "RepriseHitRatioCollapsed",
        "RepriseCacheBreakerOpen",
        "RepriseInferenceQueueSaturated",
        "RepriseReplicaNotReady",
    } <= names


def _kubectl() -> str:
    return str(Path(sys.executable).parent / "kubectl")


def test_kustomization_provisions_the_dashboard_for_grafanas_sidecar() -> None:
    out = subprocess.run([_kubectl(), "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["reprise.json"]) == dashboard()
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "cache-metrics"}
