"""llama.cpp (PyPI ``llama-cpp-python``, built by ``make llamacpp``) on the same GGUF and threads."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


#: Prefill passes per length (the first is dropped) and decode runs: llama.cpp's 64-token prefill varied
#: 32-82 tok/s between runs of 4 passes on a Zen 3 VM, so the median takes more of them.
PREFILL_REPEATS = 7
DECODE_REPEATS = 5


def measure(gguf: Path, threads: int, prompt_tokens: list[int], lengths: tuple[int, ...], decode_tokens: int) -> dict[str, Any]:
    """Prefill tokens/s at each length and decode tokens/s (one token per eval, like our decode loop)."""
    import llama_cpp
    from llama_cpp import Llama

    model = Llama(
        model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=512, verbose=False
    )
    out: dict[str, Any] = {"version": llama_cpp.__version__, "threads": threads, "prefill_tok_s": {}}
    for n in lengths:
        times = []
        for _ in range(PREFILL_REPEATS):
            model.reset()
            start = time.perf_counter()
            model.eval(prompt_tokens[:n])
            times.append(time.perf_counter() - start)
        out["prefill_tok_s"][str(n)] = n / statistics.median(times[1:])
    runs = []
    for _ in range(DECODE_REPEATS):
        model.reset()
        model.eval(prompt_tokens[:32])
        token = prompt_tokens[32]
        start = time.perf_counter()
        for _ in range(decode_tokens):
            model.eval([token])
        runs.append(decode_tokens / (time.perf_counter() - start))
    out["decode_tok_s"] = statistics.median(runs)
    return out
