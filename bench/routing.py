"""Turn-5 TTFT across two inference replicas: prefix routing vs round-robin, and one replica alone.

    python -m bench.routing                 # the default model (.models), one core per replica
    python -m bench.routing --model tiny    # the tests' tiny random model: the mechanics only

Two inference processes, pinned to one core each (``--cpus``), serve the same
conversations through the gateway's own inference client, once per mode:

* ``prefix``: :class:`gateway.replicas.RoutedInference` (what ``--inference-routing prefix`` runs);
* ``round-robin``: one channel with gRPC's ``round_robin`` over both (``--inference-routing round-robin``);
* ``one replica``: the routed client over the first replica only: the figure routing should keep.

Each conversation runs its turns in order (greedy, ``--max-new-tokens`` per reply), one
conversation after another, so no call waits for another: what differs is only whether
turn N meets turns 1..N-1's KV on its replica. Conversations are new in each mode (a random
tag in the first turn), so no mode finds another's prefix. The cache service is not in the
path: it would answer repeated turns, and the question is the model's.
Results: bench/results/routing-<cpu kind>.json and .md (the current run with the default model on this kind of
CPU; ``--model tiny``: routing-tiny-<cpu kind>) and a row of bench/results/HISTORY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import headlines, render_docs, results_io
from gateway.clients import GrpcInference
from gateway.core.types import InferenceChunk, Prompt
from gateway.replicas import RoutedInference, RoutingConfig
from gateway.server import INFERENCE_SERVICE, backend_channel
from devtools.devstack import ServiceProcess, free_port, wait_serving
from reprise.domain import Decoding, Role, Turn
from reprise.rpc.channel import retry_service_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

QUESTIONS = [
    "Explain in a few sentences how a hash table handles collisions.",
    "Now compare that with open addressing.",
    "Which one is friendlier to CPU caches, and why?",
    "Give a short Python example of linear probing.",
    "Summarise the trade-offs we discussed in three bullet points.",
]


async def ttfts(client: object, conversations: int, turns: int, max_new_tokens: int) -> list[list[float]]:
    """Per conversation, the time to the first reply piece of each turn, in ms."""
    chat: Callable[..., object] = client.chat_stream  # type: ignore[attr-defined]
    decoding = Decoding(max_new_tokens=max_new_tokens)
    out = []
    for c in range(conversations):
        tag = uuid.uuid4().hex[:8]
        history: tuple[Turn, ...] = ()
        times = []
        for t in range(turns):
            text = QUESTIONS[t % len(QUESTIONS)] + (f" (conversation {tag})" if t == 0 else "")
            start = time.perf_counter()
            first: float | None = None
            parts = []
            async for chunk in chat(Prompt(text, history, decoding=decoding), 300.0):  # type: ignore[attr-defined]
                piece: InferenceChunk = chunk
                if first is None:
                    first = (time.perf_counter() - start) * 1000
                parts.append(piece.delta)
            times.append(first or 0.0)
            history += (Turn(Role.USER, text), Turn(Role.ASSISTANT, "".join(parts)))
        out.append(times)
        print(f"  conversation {c + 1}: TTFT by turn (ms) " + ", ".join(f"{x:.0f}" for x in times), flush=True)
    return out


async def measure(addresses: list[str], args: argparse.Namespace) -> dict[str, object]:
    def channel(address: str, tls: object) -> object:
        return backend_channel(address, None, retry_service_config([INFERENCE_SERVICE], max_attempts=2))

    modes: dict[str, Callable[[], Awaitable[tuple[object, Callable[[], Awaitable[None]]]]]] = {}

    async def routed(target: str) -> tuple[object, Callable[[], Awaitable[None]]]:
        client = RoutedInference(target, None, channel, RoutingConfig(resolve_s=0))  # type: ignore[arg-type]
        await client.start()
        return client, client.close

    async def round_robin() -> tuple[object, Callable[[], Awaitable[None]]]:
        ch = backend_channel("ipv4:" + ",".join(addresses), None, retry_service_config([INFERENCE_SERVICE]))
        return GrpcInference(ch), ch.close

    modes["prefix"] = lambda: routed(",".join(addresses))
    modes["round-robin"] = round_robin
    modes["one replica"] = lambda: routed(addresses[0])
    results: dict[str, object] = {}
    for name, make in modes.items():
        print(f"{name}:", flush=True)
        client, close = await make()
        try:
            await ttfts(client, 1, 2, args.max_new_tokens)  # warm-up: connections, first-call costs
            per_conversation = await ttfts(client, args.conversations, args.turns, args.max_new_tokens)
        finally:
            await close()
        last = [times[-1] for times in per_conversation]
        results[name] = {
            "turn_ttft_ms_median": [round(statistics.median(t[i] for t in per_conversation), 1) for i in range(args.turns)],
            f"turn{args.turns}_ttft_ms": [round(x, 1) for x in last],
            f"turn{args.turns}_ttft_ms_median": round(statistics.median(last), 1),
        }
    return results


def _start_replicas(model: str, model_cache: Path, run_dir: Path) -> list[ServiceProcess]:
    procs = []
    for i in range(2):
        port = free_port()
        argv = [sys.executable, "-m", "inference_svc", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
                "--log-format", "text", "--model", model, "--model-cache", str(model_cache), "--cpus", str(i)]
        procs.append(ServiceProcess(f"inference-{i}", argv, port, run_dir / f"inference-{i}.log").start())
    return procs


def _markdown(report: dict[str, object]) -> str:
    r: dict[str, dict[str, object]] = report["results"]  # type: ignore[assignment]
    n = report["turns"]
    lines = [
        f"# Routing across two inference replicas ({report['model']})",
        "",
        f"{report['machine']}; {report['conversations']} conversations x {n} turns, greedy, "
        f"{report['max_new_tokens']} new tokens per reply; replicas pinned to one core each. `python -m bench.routing`.",
        "",
        f"| mode | turn-{n} TTFT median (ms) | median TTFT by turn (ms) |",
        "|---|---|---|",
    ]
    for mode, v in r.items():
        by_turn = ", ".join(str(x) for x in v["turn_ttft_ms_median"])  # type: ignore[attr-defined]
        lines.append(f"| {mode} | {v[f'turn{n}_ttft_ms_median']} | {by_turn} |")
    lines += ["", f"prefix / one replica: **{report['prefix_over_one']}x**; "
              f"round-robin / one replica: **{report['round_robin_over_one']}x**.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="inference --model; 'tiny': the tests' tiny random model")
    p.add_argument("--conversations", type=int, default=5)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="reprise-routing-") as tmp:
        run_dir = Path(tmp)
        model, model_cache = args.model, ROOT / ".models"
        if args.model == "tiny":
            from tests.support.tiny_model import build_tiny_model

            model, model_cache = str(build_tiny_model(run_dir / "tiny")), run_dir / "models"
        procs = _start_replicas(model, model_cache, run_dir)
        try:
            for proc in procs:
                wait_serving(proc.address, 900, proc.proc)
            results = asyncio.run(measure([proc.address for proc in procs], args))
        finally:
            for proc in procs:
                proc.stop()
    key = f"turn{args.turns}_ttft_ms_median"
    one = results["one replica"][key]  # type: ignore[index]
    report = {
        "model": args.model,
        "machine": results_io.cpu_name(),
        "date": results_io.now(),
        "conversations": args.conversations,
        "turns": args.turns,
        "max_new_tokens": args.max_new_tokens,
        "results": results,
        "prefix_over_one": round(results["prefix"][key] / one, 2) if one else None,  # type: ignore[index]
        "round_robin_over_one": round(results["round-robin"][key] / one, 2) if one else None,  # type: ignore[index]
    }
    # The tiny model measures the mechanics only: its result is kept apart from the default model's.
    bench = "routing" if args.model == "default" else "routing-tiny" if args.model == "tiny" else "routing-other"
    results_io.write_current(bench, report, _markdown(report), out=args.out)
    if args.out == RESULTS:
        results_io.append_history(bench, headlines.routing(report))
        render_docs.main([])
    print(_markdown(report))


if __name__ == "__main__":
    main()
