"""ghz-compatible load generator: ``python -m bench.load --config deploy/ghz/classify.json``.

Reads a ghz JSON config, drives the service with grpc.aio at a fixed
concurrency (``-c``) or rate (``--rps``), shows a progress bar, and writes
ghz's JSON report (``-o``) and a latency plot (``--plot``). Flags override the
config file, as ghz's do. ``--cache off`` adds the cache policy
``{"no_cache": true, "no_store": true}`` to every request: the same mix with
Reprise's response cache out of the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.loadgen` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from bench.loadgen.config import ConfigError, LoadConfig, load_config, parse_duration  # noqa: E402
from bench.loadgen.plot import plot_report  # noqa: E402
from bench.loadgen.report import build_report, summary_line  # noqa: E402
from bench.loadgen.rpc import resolve_method  # noqa: E402
from bench.loadgen.runner import CallResult, run_load  # noqa: E402

CACHE_OFF = {"no_cache": True, "no_store": True}


def with_cache_policy(data: Sequence[Mapping[str, Any]], policy: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """Every data element with ``policy`` merged into its ``cache`` field."""
    return tuple({**item, "cache": {**dict(item.get("cache") or {}), **policy}} for item in data)


async def run_with_progress(cfg: LoadConfig, *, progress: bool = True, reflection: bool = True) -> dict[str, Any]:
    """Resolve the method, run the load with a tqdm bar, and return the ghz-format report."""
    method = await asyncio.to_thread(resolve_method, cfg, reflection=reflection)
    bar = tqdm(total=None if cfg.duration_s else cfg.total, desc=cfg.name or method.name, unit="req",
               disable=not progress, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    errors = 0

    def on_result(result: CallResult) -> None:
        nonlocal errors
        errors += result.status != "OK"
        bar.update(1)
        if errors:
            bar.set_postfix(errors=errors, refresh=False)

    try:
        run = await run_load(cfg, method, on_result=on_result)
    finally:
        bar.close()
    return build_report(run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="ghz JSON config file (deploy/ghz/*.json)")
    p.add_argument("--host", help="host:port (overrides the config's host)")
    p.add_argument("-c", "--concurrency", type=int)
    p.add_argument("-n", "--total", type=int)
    p.add_argument("--connections", type=int)
    p.add_argument("-r", "--rps", type=float, help="rate limit over all workers (0: none)")
    p.add_argument("-z", "--duration", help="run for this long (Go duration, e.g. 30s); total is ignored")
    p.add_argument("-t", "--timeout", help="per-call timeout (Go duration)")
    p.add_argument("--skip-first", type=int, help="leave the first N results out of the report (warm-up)")
    p.add_argument("--count-errors", action="store_true", default=None,
                   help="include non-OK calls in the latency statistics")
    p.add_argument("--cache", choices=("on", "off"), default="on",
                   help="off: every request carries cache policy no_cache + no_store")
    p.add_argument("--token", default=os.environ.get("REPRISE_TOKEN", ""),
                   help="bearer token for a gateway with auth on (make up TOKENS=...); env REPRISE_TOKEN")
    p.add_argument("--name", help="test name in the report")
    p.add_argument("-o", "--output", help="report file (ghz JSON format); default: the config's output, else stdout")
    p.add_argument("--plot", help="write a PNG latency plot here")
    p.add_argument("--no-details", action="store_true", help="leave the per-call details out of the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-reflection", action="store_true", help="find the method in the local protos")
    return p


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    cfg = load_config(args.config)
    cfg = cfg.with_overrides(
        host=args.host, concurrency=args.concurrency, total=args.total, connections=args.connections,
        rps=args.rps, skip_first=args.skip_first, count_errors=args.count_errors, name=args.name,
        duration_s=parse_duration(args.duration, "--duration") if args.duration else None,
        timeout_s=parse_duration(args.timeout, "--timeout") if args.timeout else None,
        output=args.output,
    )
    if args.cache == "off":
        cfg = cfg.with_overrides(data=with_cache_policy(cfg.data, CACHE_OFF))
    if args.token:
        cfg = cfg.with_overrides(metadata={**cfg.metadata, "authorization": f"Bearer {args.token}"})
    if not cfg.host:
        raise ConfigError("host: not set in the config; pass --host")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        report = asyncio.run(run_with_progress(cfg, progress=not args.no_progress, reflection=not args.no_reflection))
    except ConfigError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        plot_report(report, args.plot)
    if args.no_details:
        report["details"] = None
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n")
    else:
        print(text)
    print(summary_line(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
