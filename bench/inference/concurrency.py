"""Aggregate decode under concurrency (issue 25): tokens/s of 1, 4, 8 and 16 greedy chats at once.

``python -m bench.inference.concurrency`` runs it alone; ``make bench-inference`` runs it too.
The inference service runs as its own process (``python -m inference_svc`` on 127.0.0.1, the
default model from ``--model-cache``): clients in the same process would share its GIL and slow
its model thread. Each level sends N distinct greedy chats at once (``max_new_tokens`` 64),
``--rounds`` times; its figure is the median over rounds of all replies' completion tokens
over the round's wall time (first request sent to last reply back, prefill included).

The measurement takes any chat client (:data:`Chat`): :func:`measure` is the hook for a peer
(llama.cpp's server with ``--parallel``, on the same GGUF and threads), measured the same way.

Writes ``bench/results/inference-concurrency-<cpu kind>.{json,md}`` (the current run on that
kind of CPU), appends a row to ``bench/results/HISTORY.md`` and regenerates
the table in docs/inference.md from the current files (``--render-only``: only that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench import results_io

#: Concurrent chats per level.
LEVELS = (1, 4, 8, 16)
NEW_TOKENS = 64
RESULTS = Path(__file__).resolve().parents[1] / "results"
#: Sixteen distinct requests that each ask for more than 64 tokens (a short reply would end early).
PROMPTS = [
    "Explain in detail how an LRU cache works.",
    "Write a Python function that merges two sorted lists, and explain it.",
    "Describe the water cycle step by step.",
    "What are the main differences between TCP and UDP? Explain each.",
    "Write a short story about a robot learning to paint.",
    "Explain how a hash map handles collisions.",
    "Give five tips for writing maintainable code, with a sentence on each.",
    "Describe how HTTPS keeps a connection private.",
    "Explain what a database index is and when to use one.",
    "Write a Python class for a bank account with deposit and withdraw methods.",
    "Explain the difference between a process and a thread in detail.",
    "Describe how photosynthesis works.",
    "Explain how garbage collection works in Python.",
    "Write a haiku about autumn, then explain its imagery.",
    "Explain recursion to a beginner with an example.",
    "Describe the causes of the French Revolution.",
]

#: Sends one greedy chat of ``prompt`` with at most ``max_new_tokens`` and returns the tokens it generated.
Chat = Callable[[str, int], Awaitable[int]]


async def aggregate_tok_s(chat: Chat, concurrency: int, new_tokens: int = NEW_TOKENS, rounds: int = 3) -> dict[str, Any]:
    """``concurrency`` chats at once, ``rounds`` times: the median aggregate tokens/s, and what it is made of."""
    rates, walls, tokens = [], [], []
    for r in range(rounds):
        prompts = [PROMPTS[(r + i) % len(PROMPTS)] for i in range(concurrency)]
        start = time.perf_counter()
        generated = await asyncio.gather(*(chat(p, new_tokens) for p in prompts))
        wall = time.perf_counter() - start
        rates.append(sum(generated) / wall)
        walls.append(wall)
        tokens.append(sum(generated))
    return {
        "tok_s": statistics.median(rates),
        "tok_s_rounds": rates,
        "wall_s": statistics.median(walls),
        "completion_tokens": tokens,
    }


async def measure(chat: Chat, levels: Sequence[int] = LEVELS, new_tokens: int = NEW_TOKENS, rounds: int = 3) -> dict[str, Any]:
    """Every level through ``chat`` (after one warm-up chat); ``speedup`` is each level's rate over one chat's."""
    await chat(PROMPTS[0], 8)
    out = {str(n): await aggregate_tok_s(chat, n, new_tokens, rounds) for n in levels}
    single = out[str(levels[0])]["tok_s"]
    return {"levels": out, "speedup": {k: v["tok_s"] / single for k, v in out.items()}}


def grpc_chat(stub: Any) -> Chat:
    """A :data:`Chat` over Reprise's gRPC ``Chat``."""
    from reprise.common.v1 import common_pb2
    from reprise.inference.v1 import inference_pb2 as pb

    async def chat(prompt: str, max_new_tokens: int) -> int:
        reply = await stub.Chat(pb.ChatRequest(text=prompt, decoding=common_pb2.DecodingParams(max_new_tokens=max_new_tokens)))
        return reply.usage.completion_tokens

    return chat


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def served(model: str, cache: Path, max_active_streams: int, cpus: str = "") -> AsyncIterator[tuple[Any, Any]]:
    """The inference service as its own process; yields (stub, ModelInfo) once it is ready."""
    import grpc

    from reprise.inference.v1 import inference_pb2 as pb
    from reprise.inference.v1 import inference_pb2_grpc as pb_grpc

    port = _free_port()
    argv = [sys.executable, "-m", "inference_svc", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
            "--model", model, "--model-cache", str(cache), "--max-active-streams", str(max_active_streams),
            "--log-level", "WARNING"]
    server = subprocess.Popen(argv + (["--cpus", cpus] if cpus else []))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            end = time.monotonic() + 900
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the inference service exited with {server.returncode}")
                try:
                    info = await stub.ModelInfo(pb.ModelInfoRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    if time.monotonic() > end:
                        raise SystemExit("the inference service did not become ready") from None
                    await asyncio.sleep(1.0)
            yield stub, info
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def cpu_kind() -> str:
    """This machine's kind of CPU for result file names (one definition: bench/results_io.py)."""
    return results_io.cpu_kind()


def markdown(r: dict[str, Any]) -> str:
    levels = r["levels"]
    lines = [
        f"# Aggregate decode under concurrency ({r['cpu_kind']})",
        "",
        f"{r['cpu']}; {r['threads']} threads; model {r['model']} ({r['weights']}, {r['dtype']}, int4 kernel "
        f"{r['int4_kernel']}, decode ops {r['decode_ops']}); --max-active-streams {r['max_active_streams']}; "
        f"{r['new_tokens']} new tokens per greedy chat, through gRPC Chat; median of {r['rounds']} rounds; {r['date']}.",
        "",
        "| concurrent chats | aggregate tok/s | × one chat | wall s (median) | completion tokens per round |",
        "|---|---|---|---|---|",
    ]
    for n, v in levels.items():
        lines.append(
            f"| {n} | {v['tok_s']:.1f} | {r['speedup'][n]:.2f}× | {v['wall_s']:.2f} | {', '.join(map(str, v['completion_tokens']))} |"
        )
    return "\n".join(lines) + "\n"


def headline(r: dict[str, Any]) -> str:
    """The HISTORY.md headline: aggregate tok/s by chats at once, and 8 at once over one."""
    rates = " / ".join(f"{r['levels'][n]['tok_s']:.1f}" for n in r["levels"])
    return f"aggregate decode tok/s at {' / '.join(r['levels'])} chats: {rates}; 8 chats {r['speedup'].get('8', float('nan')):.2f}x one"


DOC = Path(__file__).resolve().parents[2] / "docs" / "inference.md"
DOC_BEGIN = "<!-- bench:concurrency:begin (generated from bench/results/inference-concurrency-*.json) -->"
DOC_END = "<!-- bench:concurrency:end -->"


def doc_block(results: Sequence[dict[str, Any]]) -> str:
    """docs/inference.md's table of the current result of each CPU kind (never typed by hand)."""
    levels = list(results[0]["levels"]) if results else [str(n) for n in LEVELS]
    lines = [
        DOC_BEGIN,
        f"| CPU kind (run) | {' | '.join(f'{n} chats' for n in levels)} | 8 chats × one |",
        f"|---|{'---|' * len(levels)}---|",
    ]
    for r in results:
        cells = " | ".join(f"{r['levels'][n]['tok_s']:.1f} tok/s" for n in levels)
        lines.append(
            f"| {r['cpu_kind']} ({r['date']}, {r['commit']}, load {r.get('loadavg', float('nan')):.1f}) | {cells} | "
            f"**{r['speedup'].get('8', float('nan')):.2f}×** |"
        )
    return "\n".join(lines + [DOC_END])


def current_results(out: Path = RESULTS) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("inference-concurrency-*.json"))]


def render_doc(out: Path = RESULTS) -> None:
    """Rewrite the generated block of docs/inference.md from the current result files."""
    text = DOC.read_text()
    start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
    DOC.write_text(text[:start] + doc_block(current_results(out)) + text[end:])


def write(r: dict[str, Any], out: Path = RESULTS) -> Path:
    """The current result of this CPU kind (json + md) and a history row; returns the json's path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"inference-concurrency-{r['cpu_kind']}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(r))
    results_io.append_history("inference-concurrency", headline(r), r["cpu_kind"], date=r["date"], commit_id=r["commit"],
                              history=out / "HISTORY.md")
    return stem.with_suffix(".json")


async def run(model: str, cache: Path, max_active_streams: int = 16, rounds: int = 3, cpus: str = "",
              levels: Sequence[int] = LEVELS) -> dict[str, Any]:
    """Start the service, measure every level through gRPC, and describe the run."""
    async with served(model, cache, max_active_streams, cpus) as (stub, info):
        result = await measure(grpc_chat(stub), levels, NEW_TOKENS, rounds)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        **result,
        "cpu": cpu, "cpu_kind": cpu_kind(), "threads": info.threads, "model": info.model_id, "weights": info.weights,
        "dtype": info.dtype, "int4_kernel": info.int4_kernel, "decode_ops": info.decode_ops,
        "max_active_streams": max_active_streams, "new_tokens": NEW_TOKENS, "rounds": rounds,
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit or "?", "loadavg": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.concurrency", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--model-cache", default=Path(".models"), type=Path)
    parser.add_argument("--max-active-streams", default=16, type=int)
    parser.add_argument("--rounds", default=3, type=int)
    parser.add_argument("--cpus", default="", help="pin the service like its --cpus")
    parser.add_argument("--out", default=RESULTS, type=Path)
    parser.add_argument("--render-only", action="store_true", help="only regenerate docs/inference.md's table")
    args = parser.parse_args()
    if not args.render_only:
        result = asyncio.run(run(args.model, args.model_cache, args.max_active_streams, args.rounds, args.cpus))
        print(markdown(result))
        print(f"written {write(result, args.out)}")
    if args.out == RESULTS:
        render_doc()


if __name__ == "__main__":
    main()
