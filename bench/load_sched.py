"""``python -m bench.load_sched`` (``make bench-sched``): the inference service's scheduling under load (issue 25).

Two scenarios against one inference service started as its own process on
127.0.0.1 (``python -m inference_svc``; the clients here would otherwise share
its GIL and slow its model thread):

1. **Short behind long:** a short Classify's latency idle (p50), then while four
   8,000-character Classify run back to back (p50/p99). Goal: p99 under load
   ≤ 3× the idle p50.
2. **50 Chats with 20 s deadlines:** 50 clients keep one Chat each in flight for
   ``--chat-seconds``; a refused call (RESOURCE_EXHAUSTED) is retried after a
   short pause. Goal: ≥ 95% of admitted calls finish within their deadline.

Writes ``bench/results/sched-<cpu kind>.json`` and ``.md`` (the current run on this kind of CPU;
``sched-tiny-<cpu kind>`` with the test model), a row of ``bench/results/HISTORY.md`` and the docs'
generated blocks. ``--model tiny`` runs the tiny
random-weight test model (plumbing, not speed).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import headlines, render_docs, results_io
from reprise.common.v1 import common_pb2
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
SHORT = "The battery lasts all day and the screen is gorgeous."
# ~8,000 characters of ordinary review text: the legal long prompt of the issue.
LONG = (
    "I bought this phone three weeks ago. The battery lasts all day, the screen is bright, but the camera "
    "struggles in low light and the charger that came with it stopped working after a week. Support was slow. "
) * 40
LONG = LONG[:8000]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class ShortBehindLong:
    idle_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    long_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        idle_p50 = statistics.median(self.idle_ms)
        p99 = _pct(self.loaded_ms, 0.99)
        return {
            "idle_p50_ms": idle_p50,
            "loaded_p50_ms": statistics.median(self.loaded_ms),
            "loaded_p99_ms": p99,
            "p99_over_idle_p50": p99 / idle_p50,
            "long_p50_ms": statistics.median(self.long_ms) if self.long_ms else float("nan"),
            "samples": len(self.loaded_ms),
            "long_done": len(self.long_ms),
        }


async def short_behind_long(stub: pb_grpc.InferenceStub, samples: int, long_chars: int) -> ShortBehindLong:
    out = ShortBehindLong()

    async def short() -> float:
        t = time.perf_counter()
        await stub.Classify(pb.ClassifyRequest(text=SHORT), timeout=120)
        return (time.perf_counter() - t) * 1000

    for _ in range(3):
        await short()  # warm
    for _ in range(samples):
        out.idle_ms.append(await short())
        await asyncio.sleep(0.02)
    stop = asyncio.Event()

    async def long_loop(i: int) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            # A distinct text each time: identical texts would be computed once per batch.
            await stub.Classify(pb.ClassifyRequest(text=f"{i}-{len(out.long_ms)} " + LONG[: long_chars - 10]), timeout=600)
            out.long_ms.append((time.perf_counter() - t) * 1000)

    longs = [asyncio.ensure_future(long_loop(i)) for i in range(4)]
    await asyncio.sleep(1.0)  # all four are prefilling
    for _ in range(samples):
        out.loaded_ms.append(await short())
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*longs)
    return out


@dataclass
class ChatsWithDeadlines:
    finished: int = 0  # admitted and finished in time
    late: int = 0  # admitted, ran into the deadline
    refused: int = 0  # refused at admission (RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED for a request too long alone)
    other: int = 0
    refusal_ms: list[float] = field(default_factory=list)
    finished_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        admitted = self.finished + self.late
        return {
            "admitted": admitted,
            "finished_in_time": self.finished,
            "late": self.late,
            "refused": self.refused,
            "other_errors": self.other,
            "finished_fraction": self.finished / admitted if admitted else float("nan"),
            "refusal_p50_ms": statistics.median(self.refusal_ms) if self.refusal_ms else float("nan"),
            "finished_p50_s": statistics.median(self.finished_s) if self.finished_s else float("nan"),
            "finished_max_s": max(self.finished_s) if self.finished_s else float("nan"),
        }


async def chats_with_deadlines(
    stub: pb_grpc.InferenceStub, clients: int, seconds: float, deadline_s: float, new_tokens: int, backoff_s: float
) -> ChatsWithDeadlines:
    out = ChatsWithDeadlines()
    end = time.perf_counter() + seconds

    async def client(i: int) -> None:
        n = 0
        while time.perf_counter() < end:
            n += 1
            request = pb.ChatRequest(
                text=f"Client {i}, question {n}: explain briefly why caching speeds up a web service.",
                decoding=common_pb2.DecodingParams(max_new_tokens=new_tokens),
            )
            t = time.perf_counter()
            try:
                await stub.Chat(request, timeout=deadline_s)
                out.finished += 1
                out.finished_s.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError as err:
                # Refused at admission: RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED at once when the request alone
                # could not finish in time (its message says what it "needs"); a later DEADLINE_EXCEEDED ran late.
                refused_alone = err.code() is grpc.StatusCode.DEADLINE_EXCEEDED and "even with nothing else running" in (err.details() or "")
                if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED or refused_alone:
                    out.refused += 1
                    out.refusal_ms.append((time.perf_counter() - t) * 1000)
                    await asyncio.sleep(backoff_s)
                elif err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    out.late += 1
                else:
                    out.other += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _ready(stub: pb_grpc.InferenceStub, server: subprocess.Popen, timeout_s: float = 900) -> pb.ModelInfoResponse:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"the inference service exited with {server.returncode}")
        try:
            return await stub.ModelInfo(pb.ModelInfoRequest(), timeout=5)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(1.0)
    raise SystemExit("the inference service did not become ready")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model
    cache = args.model_cache
    if model == "tiny":
        from tests.support.tiny_model import build_tiny_model

        where = Path(tempfile.mkdtemp(prefix="reprise-sched-"))
        model, cache = str(build_tiny_model(where / "model")), where / "cache"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "inference_svc", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
         "--model", model, "--model-cache", str(cache), "--prefill-chunk", str(args.prefill_chunk),
         "--prefill-slice", str(args.prefill_slice), "--max-queue", str(args.max_queue),
         "--max-active-streams", str(args.max_active_streams), "--log-level", "WARNING"],
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            info = await _ready(stub, server)
            result: dict[str, Any] = {
                "model": info.model_id,
                "dtype": info.dtype,
                "weights": info.weights,
                "threads": info.threads,
                "machine": results_io.cpu_name(),
                "date": results_io.now(),
                "prefill_chunk": args.prefill_chunk,
                "prefill_slice": args.prefill_slice,
                "max_active_streams": args.max_active_streams,
            }
            if not args.chats_only:
                sbl = await short_behind_long(stub, args.samples, args.long_chars)
                result["long_chars"] = args.long_chars
                result["short_behind_long"] = {**sbl.summary(), "raw": asdict(sbl)}
            if not args.classify_only:
                cwd = await chats_with_deadlines(
                    stub, args.clients, args.chat_seconds, args.deadline, args.new_tokens, args.backoff
                )
                result["chats_with_deadlines"] = {
                    **cwd.summary(),
                    "clients": args.clients,
                    "seconds": args.chat_seconds,
                    "deadline_s": args.deadline,
                    "max_new_tokens": args.new_tokens,
                }
            return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Inference scheduling under load (`make bench-sched`)",
        "",
        f"Model {r['model']} ({r['dtype']}, {r['weights']}), {r['threads']} threads, {r['machine']}; "
        f"--prefill-chunk {r['prefill_chunk']}, --prefill-slice {r['prefill_slice']}, --max-active-streams {r['max_active_streams']}. One run.",
        "",
    ]
    if s := r.get("short_behind_long"):
        lines += [
            f"## A short Classify while four {r['long_chars']:,}-character Classify run",
            "",
            "| idle p50 | loaded p50 | loaded p99 | p99 / idle p50 (goal ≤ 3) | long Classify p50 | samples |",
            "|---|---|---|---|---|---|",
            f"| {s['idle_p50_ms']:.0f} ms | {s['loaded_p50_ms']:.0f} ms | {s['loaded_p99_ms']:.0f} ms "
            f"| {s['p99_over_idle_p50']:.2f} | {s['long_p50_ms']:.0f} ms | {s['samples']} |",
            "",
        ]
    if c := r.get("chats_with_deadlines"):
        lines += [
            f"## {c['clients']} Chats in flight for {c['seconds']:.0f} s, {c['deadline_s']:.0f} s deadlines, "
            f"{c['max_new_tokens']} new tokens",
            "",
            "| admitted | finished in time (goal ≥ 95%) | late | refused at admission | refusal p50 | finished p50 / max |",
            "|---|---|---|---|---|---|",
            f"| {c['admitted']} | {c['finished_in_time']} ({100 * c['finished_fraction']:.1f}%) | {c['late']} "
            f"| {c['refused']} | {c['refusal_p50_ms']:.1f} ms | {c['finished_p50_s']:.1f} s / {c['finished_max_s']:.1f} s |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load_sched", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default', a model path, or 'tiny' (the test model)")
    parser.add_argument("--model-cache", default=Path(".models"), type=Path)
    parser.add_argument("--prefill-chunk", default=512, type=int)
    parser.add_argument("--prefill-slice", default=32, type=int)
    parser.add_argument("--max-queue", default=64, type=int)
    parser.add_argument("--max-active-streams", default=4, type=int)
    parser.add_argument("--samples", default=40, type=int, help="short Classify samples, idle and loaded")
    parser.add_argument("--long-chars", default=8000, type=int, help="length of the long Classify texts (the tiny model's tokenizer needs fewer)")
    parser.add_argument("--clients", default=50, type=int)
    parser.add_argument("--chat-seconds", default=30.0, type=float)
    parser.add_argument("--deadline", default=20.0, type=float)
    parser.add_argument("--new-tokens", default=64, type=int)
    parser.add_argument("--backoff", default=0.2, type=float, help="pause after a refusal before the next call")
    parser.add_argument("--classify-only", action="store_true")
    parser.add_argument("--chats-only", action="store_true")
    parser.add_argument("--out", help="benchmark name of the results, bench/results/<name>-<cpu kind>.* "
                        "(default: sched with the default model, sched-tiny with the test model, else sched-other)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    # Another model's run (the tiny one measures plumbing, not speed) never replaces the default model's result.
    bench = args.out or {"default": "sched", "tiny": "sched-tiny"}.get(args.model, "sched-other")
    results_io.write_current(bench, result, markdown(result), out=RESULTS)
    results_io.append_history(bench, headlines.sched(result))
    render_docs.main([])
    print(markdown(result))


if __name__ == "__main__":
    main()
