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


def test_a_run_renders_every_level_and_the_speedup_of_eight() -> None:
    levels = {str(n): {"tok_s": 10.0 * n, "wall_s": 1.0, "completion_tokens": [64 * n]} for n in concurrency.LEVELS}
    run = {
        "levels": levels, "speedup": {n: float(n) for n in levels}, "cpu_kind": "x", "date": "d", "commit": "c",
        "loadavg": 0.5, "cpu": "cpu", "threads": 2, "model": "m", "weights": "int4", "dtype": "bf16",
        "int4_kernel": "k", "decode_ops": "o", "max_active_streams": 16, "new_tokens": 64, "rounds": 3,
    }
    block = concurrency.doc_block([run])
    assert "| 10.0 tok/s | 40.0 tok/s | 80.0 tok/s | 160.0 tok/s | **8.00×** |" in block
    assert "| 16 | 160.0 | 16.00× |" in concurrency.markdown(run)
