"""Fault drills against the whole stack as separate processes (redis-server, inference, cache, gateway).

Each drill breaks one thing the way production breaks it (SIGKILL, SIGTERM, a Redis restart,
too much load) while a load runs through the gateway, and checks what a caller sees:

1. cache service killed during load -> no failed request; hits resume once it is back
   (and its in-process tiers are rebuilt from Redis);
2. Redis restarted (append-only file, like the StatefulSet's volume) -> nothing crashes,
   stored entries are served again and new ones are stored;
3. SIGTERM to inference with generations in flight -> every one completes;
4. twice the capacity offered -> RESOURCE_EXHAUSTED quickly, nothing else fails, memory flat;
5. cache process silent (SIGSTOP) -> lookups time out, the breaker opens, nothing fails; asked again after SIGCONT.

The tiny test model keeps this fast: the drills test the plumbing, not the model.
Run with `make test-faults` (marker `faults`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from reprise.common.v1 import common_pb2
from devtools.devstack import Stack, StackConfig, free_port, rss_bytes, wait_serving
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.faults

MAX_QUEUE = 4
#: Calls the inference service accepts at once: one running + the bounded queue.
CAPACITY = MAX_QUEUE + 1
INFERENCE_METRICS_PORT = free_port()

NO_CACHE = pb.CachePolicy(no_cache=True, no_store=True)
OK_STATUSES = {pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_EXACT, pb.CACHE_STATUS_SEMANTIC, pb.CACHE_STATUS_BYPASS}


def _inference_in_flight(method: str) -> float:
    """The inference service's ``reprise_rpc_in_flight`` for one RPC: calls its handlers hold now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{INFERENCE_METRICS_PORT}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("reprise_rpc_in_flight{") and f'method="{method}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("faults-run")
    config = StackConfig(
        model=str(tiny_model_dir),
        model_cache=tmp_path_factory.mktemp("faults-models"),
        run_dir=run_dir,
        redis_persist=True,
        ready_timeout_s=180,
        extra_inference_args=("--max-queue", str(MAX_QUEUE), "--max-active-streams", "1", "--grace", "30",
                              "--max-new-tokens", "16", "--metrics-port", str(INFERENCE_METRICS_PORT)),
        extra_gateway_args=("--cache-timeout-ms", "500"),
    )
    s = Stack(config).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def gateway(stack: Stack) -> AsyncIterator[pb_grpc.GatewayStub]:
    for svc in stack.services:  # a drill that failed half-way must not break the next one
        if not svc.alive():
            stack.restart(svc)
    async with grpc.aio.insecure_channel(stack.gateway.address) as channel:
        yield pb_grpc.GatewayStub(channel)


@dataclass
class Load:
    """Closed-loop Classify load over fixed texts, recording every outcome."""

    stub: pb_grpc.GatewayStub
    texts: list[str]
    statuses: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _worker(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            text = self.texts[i % len(self.texts)]
            i += 1
            try:
                r = await self.stub.Classify(pb.ClassifyRequest(text=text), timeout=20)
                self.statuses.append((time.monotonic(), r.cache.status))
            except grpc.aio.AioRpcError as err:
                self.errors.append(f"{err.code().name}: {err.details()}")
            await asyncio.sleep(0.01)

    async def run(self, body: Callable[[], Awaitable[None]], workers: int = 4) -> None:
        tasks = [asyncio.create_task(self._worker(k)) for k in range(workers)]
        try:
            await body()
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    def since(self, t: float) -> Counter[int]:
        return Counter(s for ts, s in self.statuses if ts >= t)


def _names(counter: Counter[int]) -> dict[str, int]:
    return {pb.CacheStatus.Name(k).removeprefix("CACHE_STATUS_"): v for k, v in sorted(counter.items())}


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _cached(stub: pb_grpc.GatewayStub, texts: list[str]) -> None:
    """Compute and store each text, then wait until every one is an exact hit."""
    for text in texts:
        await stub.Classify(pb.ClassifyRequest(text=text), timeout=30)
    for text in texts:
        for _ in range(100):
            r = await stub.Classify(pb.ClassifyRequest(text=text), timeout=30)
            if r.cache.status == pb.CACHE_STATUS_EXACT:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{text!r} never became an exact hit")


async def test_cache_killed_during_load_no_failures_and_hits_resume(stack: Stack, gateway) -> None:
    texts = [f"drill one: review {i}, the battery is great" for i in range(6)]
    await _cached(gateway, texts)
    load = Load(gateway, texts)
    marks: dict[str, float] = {}

    async def drill() -> None:
        await asyncio.sleep(1.0)
        marks["kill"] = time.monotonic()
        stack.cache.kill()  # SIGKILL: a crash, no goodbye
        await asyncio.sleep(3.0)
        marks["down_seen"] = time.monotonic()
        await asyncio.to_thread(stack.restart, stack.cache, 120)
        marks["back"] = time.monotonic()
        await _until(lambda: load.since(marks["back"])[pb.CACHE_STATUS_EXACT] >= 10, 60,
                     "exact hits after the cache came back")

    await load.run(drill)
    assert load.errors == [], f"requests failed while the cache was down: {Counter(load.errors)}"
    during = load.since(marks["kill"]) - load.since(marks["down_seen"])
    assert sum(during.values()) >= 10, "the load kept running while the cache was down"
    assert set(during) <= OK_STATUSES
    # The restarted cache has empty in-process tiers: these hits come from Redis.
    after = load.since(marks["back"])
    assert after[pb.CACHE_STATUS_EXACT] >= 10
    first_hit = min(ts for ts, st in load.statuses if ts >= marks["back"] and st == pb.CACHE_STATUS_EXACT)
    print(f"cache down {marks['back'] - marks['kill']:.1f}s: {sum(during.values())} calls "
          f"{_names(during)}, 0 failed; first exact hit {first_hit - marks['back']:.2f}s after it was back; "
          f"{len(load.statuses)} calls in all")


async def test_redis_restart_no_crash_entries_served_and_stored_again(stack: Stack, gateway) -> None:
    texts = [f"drill two: stored before the restart {i}" for i in range(4)]
    await _cached(gateway, texts)
    load = Load(gateway, texts)
    marks: dict[str, float] = {}

    async def drill() -> None:
        await asyncio.sleep(0.5)
        marks["restart"] = time.monotonic()
        await asyncio.to_thread(stack.redis.restart)  # SIGTERM (AOF flushed) + start on the same port and data
        marks["back"] = time.monotonic()
        await _until(lambda: load.since(marks["back"])[pb.CACHE_STATUS_EXACT] >= 10, 60,
                     "exact hits after Redis came back")

    await load.run(drill)
    assert load.errors == [], f"requests failed around the Redis restart: {Counter(load.errors)}"
    for svc in stack.services:
        assert svc.alive(), f"{svc.name} crashed when Redis restarted"
    # Entries written after the restart are stored and served too.
    await _cached(gateway, ["drill two: stored after the restart"])
    first_hit = min(ts for ts, st in load.statuses if ts >= marks["back"] and st == pb.CACHE_STATUS_EXACT)
    print(f"redis restart took {marks['back'] - marks['restart']:.2f}s; around it "
          f"{_names(load.since(marks['restart']))}, 0 failed; first exact hit {first_hit - marks['back']:.2f}s after")


async def test_sigterm_inference_lets_in_flight_generations_complete(stack: Stack, gateway) -> None:
    n = CAPACITY  # all accepted: running + queued
    finished: list[float] = []
    results: list[tuple[int, str]] = []
    started = asyncio.Event()

    async def generate(i: int) -> None:
        request = pb.ChatStreamRequest(text=f"drill three, long answer {i}", cache=NO_CACHE,
                                       decoding=common_pb2.DecodingParams(max_new_tokens=120))
        chunks = []
        try:
            async for msg in gateway.ChatStream(request, timeout=120):
                chunks.append(msg)
                started.set()
            results.append((len(chunks), "OK" if chunks and chunks[-1].HasField("finish_reason") else "TRUNCATED"))
        except grpc.aio.AioRpcError as err:
            results.append((len(chunks), err.code().name))
        finished.append(time.monotonic())

    calls = [asyncio.create_task(generate(i)) for i in range(n)]
    await asyncio.wait_for(started.wait(), 60)
    # SIGTERM only once inference holds every call (streaming or queued): a call that reaches a
    # server in the same instant as its shutdown is refused, not in flight (see `late` below).
    deadline = time.monotonic() + 30
    while await asyncio.to_thread(_inference_in_flight, "ChatStream") < n:
        assert time.monotonic() < deadline and not any(c.done() for c in calls), \
            f"never had all {n} calls in flight at once: {results}"
        await asyncio.sleep(0.002)
    sigterm_at = time.monotonic()
    stack.inference.proc.terminate()  # SIGTERM: graceful drain
    # A call sent as the drain starts is refused, and the caller must be told to retry: UNAVAILABLE
    # (grpc-core reports a call dropped at shutdown as CANCELLED; the gateway says UNAVAILABLE), or
    # RESOURCE_EXHAUSTED if it still reached the full queue before the signal landed.
    late = asyncio.create_task(gateway.ChatStream(
        pb.ChatStreamRequest(text="drill three, sent during the drain", cache=NO_CACHE), timeout=30).read())
    await asyncio.wait_for(asyncio.gather(*calls), 120)
    code = await asyncio.to_thread(stack.inference.proc.wait, 60)
    assert any(t > sigterm_at for t in finished), "the drill did not overlap: every call ended before SIGTERM"
    assert [status for _, status in results] == ["OK"] * n, results
    try:
        await late
    except grpc.aio.AioRpcError as err:
        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED), \
            (err.code(), err.details())
    assert code == 0, f"inference exited with {code} after SIGTERM"
    print(f"{n} generations in flight at SIGTERM ({sum(t > sigterm_at for t in finished)} finished after it, "
          f"the last {max(finished) - sigterm_at:.1f}s later), all complete; exit code {code}")
    # A drained service takes no new work; the stack comes back for the next drill.
    await asyncio.to_thread(stack.restart, stack.inference, 120)
    r = await gateway.Classify(pb.ClassifyRequest(text="inference is back", cache=NO_CACHE), timeout=30)
    assert r.result.label in (1, 2)


async def test_twice_capacity_is_refused_quickly_and_memory_stays_flat(stack: Stack, gateway) -> None:
    offered = 2 * CAPACITY
    outcomes: list[tuple[str, float]] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            t = time.perf_counter()
            try:
                await gateway.Chat(pb.ChatRequest(text=f"overload {i} {k}", cache=NO_CACHE), timeout=30)
                outcomes.append(("OK", time.perf_counter() - t))
            except grpc.aio.AioRpcError as err:
                outcomes.append((err.code().name, time.perf_counter() - t))
                await asyncio.sleep(0.02)  # a polite client backs off; a rude one would only make it busier

    async def round_(seconds: float) -> None:
        stop.clear()
        tasks = [asyncio.create_task(client(i)) for i in range(offered)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)

    pids = {svc.name: svc.pid for svc in (stack.gateway, stack.inference)}
    await round_(3.0)  # warm: allocators and caches reach their working size
    rss_warm = {name: rss_bytes(pid) for name, pid in pids.items()}
    outcomes.clear()
    for _ in range(3):
        await round_(3.0)
    rss_after = {name: rss_bytes(pid) for name, pid in pids.items()}

    by_code = Counter(code for code, _ in outcomes)
    assert by_code["OK"] > 0, by_code
    assert by_code["RESOURCE_EXHAUSTED"] > 0, f"2x capacity was never refused: {by_code}"
    assert set(by_code) <= {"OK", "RESOURCE_EXHAUSTED"}, f"other failures under overload: {by_code}"
    refused = sorted(s for code, s in outcomes if code == "RESOURCE_EXHAUSTED")
    assert statistics.median(refused) < 0.1 and refused[int(0.99 * (len(refused) - 1))] < 0.5, \
        f"refusals were slow: median {statistics.median(refused) * 1000:.0f} ms"
    for name in pids:
        growth = rss_after[name] - rss_warm[name]
        assert growth < 64 * 2**20, f"{name} grew {growth / 2**20:.0f} MiB over 9 s of overload"
    print(f"{offered} clients for 9 s: {dict(by_code)}; refusals median {statistics.median(refused) * 1000:.1f} ms, "
          f"max {refused[-1] * 1000:.1f} ms; RSS growth " + ", ".join(
              f"{n} {(rss_after[n] - rss_warm[n]) / 2**20:+.1f} MiB" for n in pids))


async def test_cache_hung_during_load_no_failures_breaker_opens_then_closes(stack: Stack, gateway) -> None:
    """5. The cache process stops answering (SIGSTOP: alive, connected, silent) -> lookups time out, the
    breaker opens so later requests skip the cache, nothing fails; after SIGCONT the cache is asked again."""
    import os
    import signal

    outcomes: list[tuple[float, str, str]] = []  # (time, status, reason)
    errors: list[str] = []
    stop = asyncio.Event()

    async def client(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"drill five: client {k} review {n}, the screen is bright"  # new each time: the cache is asked
            try:
                r = await gateway.Classify(pb.ClassifyRequest(text=text), timeout=20)
                outcomes.append((time.monotonic(), pb.CacheStatus.Name(r.cache.status).removeprefix("CACHE_STATUS_"), r.cache.reason))
            except grpc.aio.AioRpcError as err:
                errors.append(f"{err.code().name}: {err.details()}")
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(client(k)) for k in range(4)]
    try:
        await asyncio.sleep(1.0)
        hung = time.monotonic()
        os.kill(stack.cache.pid, signal.SIGSTOP)
        try:
            await _until(lambda: any(ts > hung and reason == "circuit breaker open" for ts, _, reason in outcomes), 30,
                         "the breaker to open on a silent cache")
            await asyncio.sleep(1.0)
        finally:
            os.kill(stack.cache.pid, signal.SIGCONT)
        back = time.monotonic()
        await _until(lambda: any(ts > back and status == "MISS" for ts, status, _ in outcomes), 60,
                     "the cache to be asked again after it answered a probe")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert errors == [], f"requests failed while the cache was silent: {Counter(errors)}"
    during = Counter(reason for ts, status, reason in outcomes if hung < ts < back and status == "BYPASS")
    assert during["cache timeout"] >= 1 and during["circuit breaker open"] >= 1, during
    print(f"cache silent {back - hung:.1f}s: {sum(during.values())} calls bypassed {dict(during)}, 0 failed; "
          f"{len(outcomes)} calls in all")
