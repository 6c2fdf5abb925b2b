"""llama.cpp's own server as the peer under concurrency: ``llama-server --parallel N`` (continuous batching).

Optional, built by ``make llama-server`` (see :data:`BUILD_HINT`): where no ``llama-server`` binary is
found, :func:`find_binary` returns None and the bench says so. :func:`served` starts the server on
127.0.0.1 with the default model's GGUF and Reprise's threads and yields a :data:`.streams.Chat`
(one greedy streamed OpenAI-style chat completion); :func:`run` measures it exactly as
``bench/inference/concurrency.py`` measures Reprise (:func:`.streams.measure`), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bench.inference import peer_batch, streams

ROOT = Path(__file__).resolve().parents[2]
#: Where a hand-built server is looked for first, then ``$LLAMA_SERVER``, then ``PATH``.
LOCAL_BINARY = ROOT / ".cache" / "llama-server" / "bin" / "llama-server"
BUILD_HINT = "`make llama-server` builds it from the llama.cpp source that the llama-cpp-python sdist vendors"


def find_binary() -> Path | None:
    for candidate in (LOCAL_BINARY, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stream(port: int, body: dict[str, Any], timeout: float) -> streams.Reply:
    """One streamed chat completion (server-sent events): when each content piece arrived, and the token count."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    reply = streams.Reply(0)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"llama-server /v1/chat/completions: HTTP {resp.status}: {resp.read()[:300]!r}")
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            if any(choice.get("delta", {}).get("content") for choice in event.get("choices", ())):
                reply.times.append(time.perf_counter())
            if "timings" in event:  # the last event: its predicted_n counts every generated token
                reply.tokens = int(event["timings"]["predicted_n"])
            elif event.get("usage"):
                reply.tokens = int(event["usage"]["completion_tokens"])
        return reply
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
                 start_timeout: float = 120.0) -> AsyncIterator[streams.Chat]:
    """``llama-server --parallel parallel`` on a free loopback port; yields a greedy chat client."""
    port = _free_port()
    cmd = [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb", str(threads),
        "--parallel", str(parallel), "-c", str(parallel * ctx_per_slot), "--no-webui",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # A thread for each chat the server takes at once: asyncio's default pool has min(32, CPUs + 4) threads, 6
    # here, which would let only 6 of 8 or 16 chats reach the server at once.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="llama-server-chat")
    loop = asyncio.get_running_loop()
    try:
        deadline = time.monotonic() + start_timeout
        while not await asyncio.to_thread(_healthy, port):
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}: {proc.stderr.read()[-800:] if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not healthy after {start_timeout:.0f}s")
            await asyncio.sleep(0.5)

        async def chat(prompt: str, max_new_tokens: int) -> streams.Reply:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_new_tokens, "temperature": 0,
                    "cache_prompt": False, "stream": True}
            return await loop.run_in_executor(pool, _stream, port, body, 600.0)

        yield chat
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(levels: Sequence[int], rounds: int, new_tokens: int) -> dict[str, Any]:
    """llama-server ``--parallel max(levels)`` measured like Reprise (:func:`.streams.measure`); or why not."""
    binary = find_binary()
    if binary is None:
        return {"unavailable": f"no llama-server binary ({BUILD_HINT})"}
    threads, gguf = peer_batch.default_threads(), peer_batch.default_gguf()
    async with served(binary, gguf, threads, max(levels)) as chat:
        result = await streams.measure(chat, levels, new_tokens, rounds)
    return {"engine": f"llama-server --parallel {max(levels)}", "binary": str(binary), "gguf": gguf.name, "threads": threads,
            "new_tokens": new_tokens, "rounds": rounds, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", default=",".join(map(str, peer_batch.LEVELS)))
    parser.add_argument("--rounds", type=int, default=peer_batch.ROUNDS)
    parser.add_argument("--new-tokens", type=int, default=peer_batch.NEW_TOKENS)
    args = parser.parse_args()
    levels = tuple(int(x) for x in args.parallel.split(","))
    print(json.dumps(asyncio.run(run(levels, args.rounds, args.new_tokens)), indent=2))


if __name__ == "__main__":
    main()
