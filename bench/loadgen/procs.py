"""One load from several client processes, started together; the server's CPU read around the measured phase.

Why: the client shares the machine's cores with the server under test, so one
Python process can be what limits the measured rate. ``procs`` processes (spawned,
never forked: a parent may hold gRPC state) each resolve the method from the local
protos, send their warm-up calls, and report ready; all start on one event, so the
wall time is shared, and each sends every ``procs``-th request number of the run
(:func:`bench.loadgen.runner.run_load`'s ``part``). Their results merge into one
:class:`~bench.loadgen.runner.RunResult`, so the ghz report and summary work on it
unchanged; the client CPU is the sum over processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from typing import Any

from bench.loadgen.config import LoadConfig
from bench.loadgen.rpc import resolve_method
from bench.loadgen.runner import RunResult, run_load

#: CPU seconds per server process, read when the measured phase starts and when it ends.
CpuProbe = Callable[[], dict[str, float]]


async def _drive(cfg: LoadConfig, part: tuple[int, int], warmup: int, start: Any, ready: Any) -> tuple:  # type: ignore[type-arg]
    async def go() -> None:
        ready.put(1)
        while not start.is_set():  # a blocking wait would stall the loop; poll briefly
            await asyncio.sleep(0.001)

    run = await run_load(cfg, resolve_method(cfg, reflection=False), part=part, warmup=warmup, ready=go)
    return run.results, run.started_ns, run.total_ns, run.end_reason, run.client_cpu_s


def _proc(cfg: LoadConfig, part: tuple[int, int], warmup: int, start: Any, ready: Any, out: Any) -> None:
    out.put(asyncio.run(_drive(cfg, part, warmup, start, ready)))


def _collect(q: Any, workers: list[Any], n: int, timeout_s: float) -> list[Any]:
    """``n`` items from ``q``; fail fast (not after the timeout) when a worker died."""
    items: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(items) < n:
        try:
            items.append(q.get(timeout=1))
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for w in workers:
                    w.kill()
                raise RuntimeError(f"load generator failed: exit codes {[w.exitcode for w in workers]}") from None
    return items


def run_procs(cfg: LoadConfig, *, procs: int = 1, warmup: int = 0, cpu_probe: CpuProbe | None = None,
              timeout_s: float = 900) -> tuple[RunResult, dict[str, float]]:
    """Run ``cfg`` from ``procs`` processes (its concurrency split among them); the merged result and,
    with ``cpu_probe``, the CPU seconds each server process used during the measured phase."""
    ctx = mp.get_context("spawn")
    start, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    n = max(1, min(procs, cfg.concurrency))
    shares = [cfg.concurrency // n + (1 if i < cfg.concurrency % n else 0) for i in range(n)]
    workers = [
        ctx.Process(target=_proc, daemon=True, args=(
            cfg.with_overrides(concurrency=c, connections=min(cfg.connections, c)), (i, n), warmup, start, ready, out))
        for i, c in enumerate(shares)
    ]
    for w in workers:
        w.start()
    _collect(ready, workers, n, 300)
    before = cpu_probe() if cpu_probe else {}
    start.set()
    parts = _collect(out, workers, n, timeout_s)
    after = cpu_probe() if cpu_probe else {}
    for w in workers:
        w.join(30)
    began = min(p[1] for p in parts)
    merged = RunResult(
        config=cfg,
        method=resolve_method(cfg, reflection=False),
        results=sorted((r for p in parts for r in p[0]), key=lambda r: r.timestamp_ns),
        total_ns=max(p[1] + p[2] for p in parts) - began,
        end_reason=next((p[3] for p in parts if p[3] != "normal"), "normal"),
        started_ns=began,
        client_cpu_s=sum(p[4] for p in parts),
    )
    return merged, {k: after[k] - before.get(k, 0.0) for k in after}
