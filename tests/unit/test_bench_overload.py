"""bench.gateway.overload's report: the last round of each gateway is the headline, every round a table row."""

from __future__ import annotations

from bench import headlines
from bench.gateway.overload import markdown


def _run(rps: float, semantic: int, bypass: int) -> dict:
    return {"requests": semantic + bypass, "rps": rps, "p50_ms": 80.0, "p99_ms": 150.0,
            "statuses": {"SEMANTIC": semantic, **({"BYPASS (cache timeout)": bypass} if bypass else {})}}


DOC = {
    "date": "2026-12-07 19:53", "cpu": "AMD EPYC", "cpu_kind": "amd-epyc-zen4", "model": "default", "chat_miss_p50_ms": 1600.0,
    "paraphrases": 30, "requests": 100, "rounds": 2, "loadavg_start": 1.0, "loadavg_end": 2.0,
    "gateways": {"miss share 0.25 (shipped)": [_run(100.0, 90, 10), _run(600.0, 100, 0)],
                 "fixed budgets": [_run(50.0, 70, 30), _run(40.0, 60, 40)]},
}


def test_headline_compares_the_last_rounds() -> None:
    line = headlines.overload(DOC)
    assert "miss share 0.25 (shipped): 600.0 req/s, p99 150 ms, 100/100 SEMANTIC" in line
    assert "fixed budgets: 40.0 req/s" in line and "60/100 SEMANTIC" in line and "15.0x req/s" in line


def test_markdown_has_a_row_per_gateway_and_round() -> None:
    md = markdown(DOC)
    assert md.count("| miss share 0.25 (shipped) |") == 2 and md.count("| fixed budgets |") == 2
    assert "BYPASS (cache timeout) 40" in md
