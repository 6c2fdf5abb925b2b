"""Generated docs must not drift: the README flag reference (from the parsers), the cache results (from bench/results)."""

from __future__ import annotations

from pathlib import Path

from reprise import flagdoc

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_flag_reference_matches_the_parsers() -> None:
    text = README.read_text(encoding="utf-8")
    assert flagdoc.BEGIN in text and flagdoc.END in text, "README lost its generated flags block"
    block = text[text.index(flagdoc.BEGIN) : text.index(flagdoc.END) + len(flagdoc.END)]
    assert block == flagdoc.render(), "README flags are stale: run `python -m reprise.flagdoc --write README.md`"



def test_cache_doc_results_match_the_bench_results() -> None:
    """docs/cache.md quotes bench/results/cache.json through the bench's own renderer, never by hand."""
    import json

    from bench.cache import bench_cache

    report = json.loads((bench_cache.ROOT / "bench" / "results" / "cache.json").read_text())
    text = bench_cache.DOC.read_text()
    block = text[text.index(bench_cache.DOC_BEGIN) : text.index(bench_cache.DOC_END) + len(bench_cache.DOC_END)]
    assert block == bench_cache.doc_block(report), "docs/cache.md is stale: python -m bench.cache.bench_cache --render-only"
