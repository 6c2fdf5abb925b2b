"""A small closed-loop load generator: N processes x M coroutines of grpc.aio, pre-serialized requests.

Why its own: the client shares the machine's two cores with the server under
test, so its CPU per request matters. Requests are serialized once up front
(the hot loop only sends bytes and parses replies), every process reports the
CPU it used, and all processes start on one signal so the wall time is shared.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from reprise.gateway.v1 import gateway_pb2 as pb

_RESPONSES = {"Classify": pb.ClassifyResponse, "Chat": pb.ChatResponse, "Analyze": pb.AnalyzeResponse}


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str
    rpc: str
    #: Serialized requests, cycled through.
    requests: list[bytes]
    concurrency: int
    total: int
    warmup: int = 200
    procs: int = 1
    metadata: tuple[tuple[str, str], ...] = ()
    #: Method path; default the gateway's.
    service: str = "reprise.gateway.v1.Gateway"


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies_ms)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))]


def _status(rpc: str, response: object) -> str:
    if rpc == "Classify" or rpc == "Chat":
        return pb.CacheStatus.Name(response.cache.status)  # type: ignore[attr-defined]
    if rpc == "Analyze":
        return pb.CacheStatus.Name(response.reply_cache.status)  # type: ignore[attr-defined]
    return "?"


async def _drive(s: Scenario, share: int, coroutines: int, offset: int, start: mp.Event, ready: mp.Queue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    channel = grpc.aio.insecure_channel(s.target)
    call = channel.unary_unary(
        f"/{s.service}/{s.rpc}", request_serializer=lambda b: b, response_deserializer=_RESPONSES[s.rpc].FromString
    )
    n = len(s.requests)
    metadata = s.metadata or None
    for i in range(s.warmup):
        await call(s.requests[(offset + i) % n], metadata=metadata, timeout=30)
    ready.put(1)
    while not start.is_set():  # a blocking wait would stall the loop; poll briefly
        await asyncio.sleep(0.001)
    result = Result()
    counter = iter(range(share))

    async def worker(k: int) -> None:
        i = offset + k * 7919
        for _ in counter:
            i += 1
            t = time.perf_counter()
            try:
                r = await call(s.requests[i % n], metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as err:
                result.errors[err.code().name] += 1
                continue
            result.latencies_ms.append((time.perf_counter() - t) * 1000)
            result.statuses[_status(s.rpc, r)] += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(coroutines)))
    t1 = time.perf_counter()
    result.client_cpu_s = time.process_time() - cpu0
    out.put((result.latencies_ms, dict(result.errors), dict(result.statuses), t0, t1, result.client_cpu_s))
    await channel.close()


def _proc(s: Scenario, share: int, coroutines: int, offset: int, start: mp.Event, ready: mp.Queue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    asyncio.run(_drive(s, share, coroutines, offset, start, ready, out))


def _collect(q: mp.Queue, workers: list, n: int, timeout_s: float) -> list:  # type: ignore[type-arg]
    """``n`` items from ``q``; fail fast (not after the timeout) when a worker died."""
    items: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while len(items) < n:
        try:
            items.append(q.get(timeout=1))
        except Exception:  # queue.Empty
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for w in workers:
                    w.kill()
                raise RuntimeError(f"load generator failed: exit codes {[w.exitcode for w in workers]}") from None
    return items


def run(s: Scenario, cpu_probe: Callable[[], dict[str, float]] | None = None) -> tuple[Result, dict[str, float]]:
    """Run ``s`` to completion; latencies are client-side, wall time spans all processes.

    ``cpu_probe`` (CPU seconds per server process) is read when the measured phase
    starts and again when it ends; the difference is returned with the result.
    """
    ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
    start, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = max(1, min(s.procs, s.concurrency))
    per_proc = [s.concurrency // procs + (1 if i < s.concurrency % procs else 0) for i in range(procs)]
    shares = [s.total * c // s.concurrency for c in per_proc]
    shares[0] += s.total - sum(shares)
    workers = [
        ctx.Process(target=_proc, args=(s, shares[i], per_proc[i], i * 104729, start, ready, out), daemon=True)
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    _collect(ready, workers, len(workers), 300)
    before = cpu_probe() if cpu_probe else {}
    start.set()
    parts = _collect(out, workers, len(workers), 900)
    after = cpu_probe() if cpu_probe else {}
    for w in workers:
        w.join(30)
    result = Result()
    for lat, errors, statuses, _t0, _t1, cpu in parts:
        result.latencies_ms += lat
        result.errors.update(errors)
        result.statuses.update(statuses)
        result.client_cpu_s += cpu
    result.wall_s = max(p[4] for p in parts) - min(p[3] for p in parts)
    return result, {k: after[k] - before.get(k, 0.0) for k in after}
