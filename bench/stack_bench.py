"""``make bench``: the ghz load mixes against the full local stack, response cache off and on.

    python -m bench.stack_bench [--mixes classify,classify-stationary,chat] [--passes 4]

Starts Redis + inference (the real default model) + cache + gateway, pinned the way
``make up`` and the Kubernetes entrypoint pin them, then for each mix in
``deploy/ghz/`` runs, in the same stack and the same run:

* **cache off**: every request carries the policy no_cache + no_store, so each one
  is computed; its cost per request does not depend on repeats, so it runs
  ``--off-passes`` passes over the data (1 by default) to bound the time;
* **cache on**: the config as it is, from an empty cache: its ``total`` requests
  (``--passes`` overrides it). A ghz data array is cycled, so repeats grow with
  every pass: the report gives the hit ratio and throughput per pass, and the
  ``*-stationary`` mix keeps its 38% new texts new for the whole run.

Writes ``bench/results/load-<cpu kind>.{json,md}`` (the summary: the current run on this kind of
CPU), beside it ``load-<cpu kind>/<mix>-cache-{off,on}.json`` (ghz's JSON report),
``<mix>.png`` (latency CDFs and throughput) and ``<mix>-cache-on-timeline.png`` (every call over
time, coloured by cache status), a row of ``bench/results/HISTORY.md``, and the generated block of
docs/deploy.md (``bench.render_docs``).
Target: >= 5x throughput with the cache on for the default mix (classify).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from bench.load import CACHE_OFF, run_with_progress, with_cache_policy
from bench.loadgen.config import LoadConfig, load_config
from bench.loadgen.plot import plot_comparison, plot_report
from bench import headlines, render_docs, results_io
from bench.loadgen.report import summary_line
from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from devtools.devstack import ROOT, StackConfig, plan_cpus, running_stack
from reprise.inference.v1 import inference_pb2, inference_pb2_grpc

GHZ = ROOT / "deploy" / "ghz"
DEFAULT_MIXES = ("classify", "classify-stationary", "chat", "chat-stream", "analyze")
TARGET_RATIO = 5.0
#: The namespace every unauthenticated gateway request uses.
NAMESPACE = "public"


def _pass_stats(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Hit ratio and throughput of each pass over the data array (from the report's details)."""
    passes = report["reprise"]["cache"]["perPass"]
    details = report.get("details") or []
    n = report["reprise"]["cache"]["dataLength"]
    out = []
    for p in passes:
        rows = [d for d in details if d["requestNumber"] // n == p["pass"]]
        starts = [datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp() for d in rows]
        ends = [s + d["latency"] / 1e9 for s, d in zip(starts, rows)]
        span = (max(ends) - min(starts)) if rows else 0
        out.append({"pass": p["pass"], "requests": p["requests"], "hitRatio": p["hitRatio"],
                    "rps": round(len(rows) / span, 2) if span else None})
    return out


def _p(report: dict[str, Any], pct: int) -> float:
    dist = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or []}
    return round(dist.get(pct, 0) / 1e6, 1)


async def _invalidate(cache_address: str) -> int:
    """Empty the namespace through the cache's own API, so in-process tiers forget it too."""
    async with grpc.aio.insecure_channel(cache_address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        try:
            response = await stub.Invalidate(cache_pb2.InvalidateRequest(namespace=NAMESPACE), timeout=30)
        except grpc.aio.AioRpcError as err:
            raise RuntimeError(f"cannot empty the cache between runs: {err.code().name} {err.details()}") from None
        return int(getattr(response, "removed", 0))


async def _model_info(address: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await inference_pb2_grpc.InferenceStub(channel).ModelInfo(inference_pb2.ModelInfoRequest(), timeout=30)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


async def run_mix(name: str, gateway: str, cache: str, out: Path, passes: int | None, off_passes: int,
                  progress: bool) -> dict[str, Any]:
    base: LoadConfig = load_config(GHZ / f"{name}.json").with_overrides(host=gateway, skip_first=0)
    n = len(base.data)
    off_cfg = base.with_overrides(name=f"{name} cache off", total=max(off_passes * n, base.concurrency),
                                  data=with_cache_policy(base.data, CACHE_OFF))
    on_cfg = base.with_overrides(name=f"{name} cache on", total=max(passes * n, base.concurrency) if passes else None)
    reports = {}
    for label, cfg in (("cache off", off_cfg), ("cache on", on_cfg)):
        await _invalidate(cache)
        load_before = os.getloadavg()[0]
        report = await run_with_progress(cfg, progress=progress)
        report["reprise"]["loadAverage1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
        path = out / f"{name}-{label.replace(' ', '-')}.json"
        path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"  {label}: {summary_line(report)}", flush=True)
        reports[label] = report
    plot_report(reports["cache on"], out / f"{name}-cache-on-timeline.png",
                f"{name}, cache on: every call over time ({n} requests per pass over the data)")
    off, on = reports["cache off"], reports["cache on"]
    ratio = on["rps"] / off["rps"] if off["rps"] else None
    plot_comparison(reports, out / f"{name}.png",
                    f"{name}: {on['rps']:.1f} vs {off['rps']:.1f} req/s with the cache on vs off "
                    f"({ratio:.1f}x; {on['count']} vs {off['count']} requests)")
    errors = {k: sum(v for s, v in r["statusCodeDistribution"].items() if s != "OK") for k, r in reports.items()}
    return {
        "mix": name,
        "call": base.call,
        "dataLength": n,
        "concurrency": base.concurrency,
        "connections": base.connections,
        "requests": {"cacheOff": off["count"], "cacheOn": on["count"]},
        "rps": {"cacheOff": round(off["rps"], 2), "cacheOn": round(on["rps"], 2)},
        "ratio": round(ratio, 2) if ratio else None,
        "p50Ms": {"cacheOff": _p(off, 50), "cacheOn": _p(on, 50)},
        "p99Ms": {"cacheOff": _p(off, 99), "cacheOn": _p(on, 99)},
        "errors": errors,
        "cacheOn": {"hitRatio": on["reprise"]["cache"]["hitRatio"], "fields": on["reprise"]["cache"]["fields"],
                    "passes": _pass_stats(on)},
        "clientCpuPercentOfOneCore": {k: r["reprise"]["client"]["cpuPercentOfOneCore"] for k, r in reports.items()},
    }


def table(summary: dict[str, Any]) -> list[str]:
    """The per-mix table (also the generated block of docs/deploy.md)."""
    env = summary["environment"]
    lines = [
        f"{env['date']}, commit `{env['commit']}`, {env['cpuModel']} ({env['cpus']} CPUs), "
        f"model `{env['model'].get('model_id', '?')}` ({env['model'].get('dtype', '?')}, "
        f"{env['model'].get('threads', '?')} threads). Pinning: inference on CPUs `{env['pinning']['inference'] or '-'}`, "
        f"gateway/cache/Redis on `{env['pinning']['frontend'] or '-'}`; the load generator (same machine) unpinned. "
        f"Load average before: {env['loadAverageBefore']}.",
        "",
        "| mix | cache off req/s | cache on req/s | ratio (target >= 5x) | hit ratio, pass 1 -> last | "
        "p50 off / on (ms) | p99 on (ms) | requests off / on | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["mixes"]:
        passes = r["cacheOn"]["passes"]
        hits = " -> ".join(f"{p['hitRatio']:.0%}" if p["hitRatio"] is not None else "-" for p in (passes[0], passes[-1]))
        met = "met" if r["ratio"] and r["ratio"] >= TARGET_RATIO else "not met"
        lines.append(
            f"| {r['mix']} | {r['rps']['cacheOff']} | {r['rps']['cacheOn']} | **{r['ratio']}x** ({met}) | {hits} | "
            f"{r['p50Ms']['cacheOff']} / {r['p50Ms']['cacheOn']} | {r['p99Ms']['cacheOn']} | "
            f"{r['requests']['cacheOff']} / {r['requests']['cacheOn']} | "
            f"{r['errors']['cache off']} / {r['errors']['cache on']} |"
        )
    return lines


def passes_line(summary: dict[str, Any]) -> str:
    """Hit ratio and throughput per cache-on pass, every mix."""
    def mix(r: dict[str, Any]) -> str:
        steps = " -> ".join(f"{p['hitRatio']:.0%} / {p['rps']:,.0f}" for p in r["cacheOn"]["passes"] if p["hitRatio"] is not None)
        return f"{r['mix']} {steps}"
    return "Per pass with the cache on (hit ratio / req/s): " + "; ".join(mix(r) for r in summary["mixes"]) + "."


def _markdown(summary: dict[str, Any], kind: str) -> str:
    lines = ["# Load mixes, response cache off vs on (`make bench`)", "", *table(summary)]
    lines += [
        "",
        "Cache off runs one pass over each data array (every request is computed, so its cost does not",
        "depend on repeats); cache on runs the config's `total` from an empty cache. A ghz",
        "data array is cycled: pass 1 has the documented shares (38% new, 42% exact repeats, 20%",
        "paraphrases), every later pass is all repeats. `classify-stationary` keeps its new texts",
        "unique per request, which bounds its ratio near 1 / 0.38 = 2.6x. Per-pass numbers are in",
        f"`load-{kind}.json`; per-call details and plots in `load-{kind}/<mix>-cache-{{off,on}}.json` / `<mix>.png`.",
        "",
    ]
    return "\n".join(lines)


def _environment(config: StackConfig, model: dict[str, Any]) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        commit += "+uncommitted" if dirty else ""
    except OSError:
        commit = "?"
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "cpuModel": cpu_model,
        "cpus": len(os.sched_getaffinity(0)),
        "pinning": {"inference": config.inference_cpus, "frontend": config.frontend_cpus},
        "model": model,
        "loadAverageBefore": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


async def _bench(args: argparse.Namespace, config: StackConfig, out: Path, gateway: str, cache: str, inference: str) -> dict:
    model = await _model_info(inference)
    environment = _environment(config, model)
    rows = []
    for name in args.mixes:
        print(f"mix {name}:", flush=True)
        rows.append(await run_mix(name, gateway, cache, out, args.passes, args.off_passes, not args.no_progress))
    return {"environment": environment, "protocol": {"passes": args.passes, "offPasses": args.off_passes,
            "targetRatio": TARGET_RATIO}, "mixes": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stack_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixes", type=lambda s: s.split(","), default=list(DEFAULT_MIXES),
                        help=f"deploy/ghz/<mix>.json to run (default {','.join(DEFAULT_MIXES)})")
    parser.add_argument("--passes", type=int, help="passes over the data with the cache on (default: the config's total)")
    parser.add_argument("--off-passes", type=int, default=1, help="passes over the data with the cache off")
    parser.add_argument("--model", default=os.environ.get("REPRISE_MODEL", "default"))
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-pin", action="store_true", help="run the services unpinned")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in args.mixes:
        if not (GHZ / f"{name}.json").exists():
            parser.error(f"no deploy/ghz/{name}.json")
    kind = results_io.cpu_kind()
    details = args.out / f"load-{kind}"
    details.mkdir(parents=True, exist_ok=True)
    front, infer = ("", "") if args.no_pin else plan_cpus()
    config = StackConfig(model=args.model, model_cache=args.model_cache, inference_cpus=infer, frontend_cpus=front,
                         run_dir=ROOT / ".run" / "bench")
    print(f"starting the stack (inference cpus {infer or 'unpinned'}, frontend {front or 'unpinned'}) ...", flush=True)
    started = time.perf_counter()
    with running_stack(config) as stack:
        print(f"ready in {time.perf_counter() - started:.0f}s", flush=True)
        summary = asyncio.run(_bench(args, config, details, stack.gateway.address, stack.cache.address,
                                     stack.inference.address))
    results_io.write_current("load", summary, _markdown(summary, kind), kind, args.out)
    if args.out == results_io.RESULTS:
        results_io.append_history("load", headlines.load(summary), kind)
        render_docs.main([])
    print(_markdown(summary, kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
