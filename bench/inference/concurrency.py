"""Aggregate decode under concurrency (issue 25): tokens/s of 1, 4, 8 and 16 greedy chats at once.

``python -m bench.inference.concurrency`` runs it alone; ``make bench-inference`` runs it too.
The inference service runs as its own process (``python -m inference_svc`` on 127.0.0.1, the
default model from ``--model-cache``): clients in the same process would share its GIL and slow
its model thread. Each level sends N distinct greedy streamed chats at once (``max_new_tokens``
64), ``--rounds`` times, and reports end to end and steady decode rates (:mod:`.streams` defines
both). Then, in the same run and after Reprise's process has exited, llama.cpp's server
(``--parallel 16``, continuous batching, same GGUF, threads and prompts; ``make llama-server``
builds it) is measured by the same function (:mod:`.peer_server`).

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
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bench import results_io
from bench.inference import peer_server, streams

LEVELS, NEW_TOKENS, PROMPTS = streams.LEVELS, streams.NEW_TOKENS, streams.PROMPTS
RESULTS = Path(__file__).resolve().parents[1] / "results"


def grpc_chat(stub: Any) -> streams.Chat:
    """A :data:`~.streams.Chat` over Reprise's gRPC ``ChatStream`` (one message per decoded piece)."""
    from reprise.common.v1 import common_pb2
    from reprise.inference.v1 import inference_pb2 as pb

    async def chat(prompt: str, max_new_tokens: int) -> streams.Reply:
        reply = streams.Reply(0)
        request = pb.ChatStreamRequest(text=prompt, decoding=common_pb2.DecodingParams(max_new_tokens=max_new_tokens))
        async for piece in stub.ChatStream(request):
            if piece.delta:
                reply.times.append(time.perf_counter())
            if piece.HasField("finish_reason"):
                reply.tokens = piece.usage.completion_tokens
        return reply

    return chat


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def served(model: str, cache: Path, max_active_streams: int, cpus: str = "",
                 extra: Sequence[str] = ()) -> AsyncIterator[tuple[Any, Any]]:
    """The inference service as its own process; yields (stub, ModelInfo) once it is ready."""
    import grpc

    from reprise.inference.v1 import inference_pb2 as pb
    from reprise.inference.v1 import inference_pb2_grpc as pb_grpc

    port = _free_port()
    argv = [sys.executable, "-m", "inference_svc", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
            "--model", model, "--model-cache", str(cache), "--max-active-streams", str(max_active_streams),
            "--log-level", "WARNING"]
    server = subprocess.Popen(argv + (["--cpus", cpus] if cpus else []) + list(extra))
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


def _rate(v: dict[str, Any] | None, key: str, over: float | None) -> str:
    if v is None or v.get(key) is None:
        return "–"
    x = float(v[key])
    return f"{x:.1f} ({x / over:.2f}×)" if over else f"{x:.1f}"


def _rows(r: dict[str, Any]) -> list[str]:
    """One table row per level: Reprise and (when measured) llama-server, end to end and steady decode, × one chat."""
    peer = r.get("llama_server") or {}
    peer_levels = peer.get("levels", {})
    ours1, peer1 = r["levels"][next(iter(r["levels"]))], next(iter(peer_levels.values()), None)
    rows = []
    for n, v in r["levels"].items():
        pv = peer_levels.get(n)
        rows.append(
            f"| {n} | {_rate(v, 'tok_s', ours1['tok_s'])} | {_rate(v, 'decode_tok_s', ours1.get('decode_tok_s'))} | "
            f"{_rate(pv, 'tok_s', peer1 and peer1['tok_s'])} | {_rate(pv, 'decode_tok_s', peer1 and peer1.get('decode_tok_s'))} | "
            f"{_ratio(v, pv)} |"
        )
    return rows


def _ratio(ours: dict[str, Any], peer: dict[str, Any] | None) -> str:
    """Reprise over llama-server at one level, end to end / steady decode."""
    if not peer:
        return "–"
    parts = [f"{ours[k] / peer[k]:.2f}×" if ours.get(k) and peer.get(k) else "–" for k in ("tok_s", "decode_tok_s")]
    return " / ".join(parts)


def markdown(r: dict[str, Any]) -> str:
    peer = r.get("llama_server") or {}
    lines = [
        f"# Aggregate decode under concurrency ({r['cpu_kind']})",
        "",
        f"{r['cpu']}; {r['threads']} threads; model {r['model']} ({r['weights']}, {r['dtype']}, int4 kernel "
        f"{r['int4_kernel']}, decode ops {r['decode_ops']}); --max-active-streams {r['max_active_streams']}; "
        f"{r['new_tokens']} new tokens per greedy chat, streamed (Reprise: gRPC ChatStream; llama.cpp: its server's "
        f"streamed /v1/chat/completions); median of {r['rounds']} rounds; {r['date']}, commit {r['commit']}, "
        f"load average {r.get('loadavg', float('nan')):.1f} at the end.",
        "",
        "*End to end*: completion tokens of all replies / wall time, prefill of every prompt included. *Steady "
        "decode*: pieces streamed while all N chats were decoding (after the last first token, before the first "
        "reply ended) / that window (`bench/inference/streams.py`). In brackets: over one chat of the same engine.",
        "",
    ]
    if "engine" in peer:
        lines.append(f"Peer: {peer['engine']} ({peer['gguf']}, {peer['threads']} threads, same prompts), measured in the same run.")
    else:
        lines.append(f"Peer: not measured ({peer.get('unavailable', 'not run')}).")
    lines += [
        "",
        "| concurrent chats | Reprise end to end tok/s | Reprise steady decode tok/s | llama-server end to end | "
        "llama-server steady decode | Reprise / llama-server (end to end / decode) |",
        "|---|---|---|---|---|---|",
        *_rows(r),
    ]
    return "\n".join(lines) + "\n"


def headline(r: dict[str, Any]) -> str:
    """The HISTORY.md headline: rates by chats at once, 8 at once over one, and over llama-server at 8."""
    rates = " / ".join(f"{r['levels'][n]['tok_s']:.1f}" for n in r["levels"])
    out = f"aggregate tok/s at {' / '.join(r['levels'])} chats: {rates}; 8 chats {r['speedup'].get('8', float('nan')):.2f}x one"
    if "decode_speedup" in r:
        out += f" end to end, {r['decode_speedup'].get('8', float('nan')):.2f}x steady decode"
    peer8 = (r.get("llama_server") or {}).get("levels", {}).get("8")
    if peer8:
        out += f"; at 8: {_ratio(r['levels']['8'], peer8).replace('×', 'x')} llama-server (end to end / decode)"
    return out


DOC = Path(__file__).resolve().parents[2] / "docs" / "inference.md"
DOC_BEGIN = "<!-- bench:concurrency:begin (generated from bench/results/inference-concurrency-*.json) -->"
DOC_END = "<!-- bench:concurrency:end -->"


def doc_block(results: Sequence[dict[str, Any]]) -> str:
    """docs/inference.md's table of the current result of each CPU kind (never typed by hand)."""
    levels = list(results[0]["levels"]) if results else [str(n) for n in LEVELS]
    lines = [
        DOC_BEGIN,
        f"| CPU kind (run) | {' | '.join(f'{n} chats' for n in levels)} | 8 chats × one: end to end / steady decode | "
        "8 chats: Reprise / llama-server (end to end / decode) |",
        f"|---|{'---|' * len(levels)}---|---|",
    ]
    for r in results:
        cells = " | ".join(f"{r['levels'][n]['tok_s']:.1f} tok/s" for n in levels)
        decode = r.get("decode_speedup", {}).get("8")
        peer8 = (r.get("llama_server") or {}).get("levels", {}).get("8")
        lines.append(
            f"| {r['cpu_kind']} ({r['date']}, {r['commit']}, load {r.get('loadavg', float('nan')):.1f}) | {cells} | "
            f"**{r['speedup'].get('8', float('nan')):.2f}×** / {f'**{decode:.2f}×**' if decode else '–'} | "
            f"{_ratio(r['levels']['8'], peer8) if peer8 else 'not measured'} |"
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
              levels: Sequence[int] = LEVELS, peer: bool = True, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Start the service, measure every level through gRPC, then llama-server the same way; describe the run.

    ``extra``: more flags for the service (e.g. another serving format); they are recorded with the result.
    """
    async with served(model, cache, max_active_streams, cpus, extra) as (stub, info):
        result = await streams.measure(grpc_chat(stub), levels, NEW_TOKENS, rounds)
    # After Reprise's process has exited, so the two never share the cores.
    result["llama_server"] = await peer_server.run(levels, rounds, NEW_TOKENS) if peer else {"unavailable": "--no-peer"}
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        **result,
        "cpu": cpu, "cpu_kind": cpu_kind(), "threads": info.threads, "model": info.model_id, "weights": info.weights,
        "dtype": info.dtype, "int4_kernel": info.int4_kernel, "decode_ops": info.decode_ops,
        "max_active_streams": max_active_streams, "new_tokens": NEW_TOKENS, "rounds": rounds, "service_args": list(extra),
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit or "?", "loadavg": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.concurrency", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--model-cache", default=Path(".models"), type=Path)
    parser.add_argument("--max-active-streams", default=16, type=int)
    parser.add_argument("--rounds", default=3, type=int)
    parser.add_argument("--cpus", default="", help="pin the service like its --cpus")
    parser.add_argument("--no-peer", action="store_true", help="skip llama-server (measured when `make llama-server` built it)")
    parser.add_argument("--service-args", default="", help="more flags for the service, e.g. '--dtype fp32 --activations int8' "
                        "(a run with any is printed, not written: the result files hold the default format)")
    parser.add_argument("--out", default=RESULTS, type=Path)
    parser.add_argument("--render-only", action="store_true", help="only regenerate docs/inference.md's table")
    args = parser.parse_args()
    if not args.render_only:
        extra = args.service_args.split()
        result = asyncio.run(run(args.model, args.model_cache, args.max_active_streams, args.rounds, args.cpus,
                                 peer=not args.no_peer, extra=extra))
        print(markdown(result))
        if extra:
            print(json.dumps(result, indent=2))
            return
        print(f"written {write(result, args.out)}")
    if args.out == RESULTS:
        render_doc()


if __name__ == "__main__":
    main()
