"""docs/inference.md quotes the concurrency benchmark's result files through its own renderer, never by hand."""

from __future__ import annotations

import pytest

from bench.inference import concurrency

pytestmark = pytest.mark.unit


def test_the_docs_table_is_generated_from_the_result_files() -> None:
    text = concurrency.DOC.read_text()
    block = text[text.index(concurrency.DOC_BEGIN) : text.index(concurrency.DOC_END) + len(concurrency.DOC_END)]
    results = concurrency.current_results()
    assert results, "no bench/results/inference-concurrency-*.json: run python -m bench.inference.concurrency"
    assert block == concurrency.doc_block(results), "stale: python -m bench.inference.concurrency --render-only"


def _run(peer: bool) -> dict:
    levels = {str(n): {"tok_s": 10.0 * n, "decode_tok_s": 12.0 * n, "wall_s": 1.0, "completion_tokens": [64 * n]}
              for n in concurrency.LEVELS}
    run = {
        "levels": levels, "speedup": {n: float(n) for n in levels}, "decode_speedup": {n: float(n) for n in levels},
        "cpu_kind": "x", "date": "d", "commit": "c",
        "loadavg": 0.5, "cpu": "cpu", "threads": 2, "model": "m", "weights": "int4", "dtype": "bf16",
        "int4_kernel": "k", "decode_ops": "o", "max_active_streams": 16, "new_tokens": 64, "rounds": 3,
        "llama_server": {"unavailable": "no llama-server binary"},
    }
    if peer:
        run["llama_server"] = {
            "engine": "llama-server --parallel 16", "gguf": "g", "threads": 2,
            "levels": {"1": {"tok_s": 5.0, "decode_tok_s": 6.0}, "8": {"tok_s": 20.0, "decode_tok_s": 32.0}},
        }
    return run


def test_a_run_renders_every_level_both_rates_and_the_peer_when_measured() -> None:
    block = concurrency.doc_block([_run(peer=False)])
    assert "| 10.0 tok/s | 40.0 tok/s | 80.0 tok/s | 160.0 tok/s | **8.00×** / **8.00×** | not measured |" in block
    md = concurrency.markdown(_run(peer=False))
    assert "| 16 | 160.0 (16.00×) | 192.0 (16.00×) | – | – | – |" in md and "Peer: not measured (no llama-server" in md
    peer = _run(peer=True)
    assert "| 8 | 80.0 (8.00×) | 96.0 (8.00×) | 20.0 (4.00×) | 32.0 (5.33×) | 4.00× / 3.00× |" in concurrency.markdown(peer)
    assert "| **8.00×** / **8.00×** | 4.00× / 3.00× |" in concurrency.doc_block([peer])
    assert "4.00x / 3.00x llama-server" in concurrency.headline(peer)
