"""bench.attacks records its sweep like every benchmark: a result file, a headline, a table rendered from the file.

The sweep itself needs the whole running stack (``make bench-attacks``); these tests use a fabricated result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import attacks, headlines, results_io


def _doc(*rows: attacks.Row, exited: dict[str, int | None] | None = None) -> dict[str, Any]:
    doc = attacks.report(list(rows), model="default", stack_ready_s=12.63, sweep_s=121.4,
                         exit_codes=exited or {"gateway": None, "cache": None, "inference": None})
    return {"cpu_kind": "amd-epyc-zen4", **doc}


OK_ROWS = (
    attacks.Row("empty text", ("INVALID_ARGUMENT",), "INVALID_ARGUMENT", "text: must not be empty", 0.1),
    attacks.Row("stop: '<|im_end|>' as a stop string", ("OK",), "OK", "", 0.4),
    attacks.Row("burst of 200 concurrent", ("OK|RESOURCE_EXHAUSTED",), "OK|RESOURCE_EXHAUSTED",
                "OK x33 + RESOURCE_EXHAUSTED x167", 3.8),
)


def test_headline_of_a_clean_sweep() -> None:
    assert headlines.attacks(_doc(*OK_ROWS)) == "3/3 ok; 0 INTERNAL/UNKNOWN; services up"


def test_headline_names_what_failed() -> None:
    bad = attacks.Row("temperature NaN", ("INVALID_ARGUMENT",), "INTERNAL", "boom", 0.2)
    unsound = attacks.Row("cross-tenant exact read", ("OK",), "OK (unsound)", "B got EXACT", 2.0)
    doc = _doc(*OK_ROWS, bad, unsound, exited={"gateway": None, "inference": -9})
    assert doc["totals"] == {"rows": 5, "ok": 3, "internal_or_unknown": 1, "services_exited": ["inference"]}
    assert headlines.attacks(doc) == ("3/5 ok (not ok: temperature NaN, cross-tenant exact read); "
                                      "1 INTERNAL/UNKNOWN; services exited: inference")


def test_table_rows_one_per_attack_with_pipes_escaped() -> None:
    lines = attacks.table(_doc(*OK_ROWS, attacks.Row("role 99", ("INVALID_ARGUMENT",), "OK", "", 0.1)))
    assert lines[:2] == ["| attack | expected | got | ok |", "|---|---|---|---|"]
    assert lines[2:] == [
        "| empty text | INVALID_ARGUMENT | INVALID_ARGUMENT | yes |",
        "| stop: '<\\|im_end\\|>' as a stop string | OK | OK | yes |",
        "| burst of 200 concurrent | OK\\|RESOURCE_EXHAUSTED | OK\\|RESOURCE_EXHAUSTED | yes |",
        "| role 99 | INVALID_ARGUMENT | OK | **no** |",
    ]
    # Every row has exactly the header's four cells once the escaped pipes are discounted.
    assert all(line.replace("\\|", "").count("|") == 5 for line in lines)


def test_report_and_doc_block_carry_the_summary() -> None:
    doc = _doc(*OK_ROWS)
    md = attacks.markdown(doc)
    assert md.startswith("# Attack sweep") and "| note | s |" in md and "OK x33 + RESOURCE_EXHAUSTED x167 | 3.8 |" in md
    assert "**3/3 ok**, 0 INTERNAL/UNKNOWN, services that exited during the sweep: none." in md
    assert "stack ready in 12.6 s" in md and "Burst of 200: OK x33 + RESOURCE_EXHAUSTED x167 in 3.8 s." in md
    block = attacks.doc_block(doc)
    assert block.startswith(attacks.DOC_BEGIN + "\n") and block.endswith("\n" + attacks.DOC_END)
    assert "| burst of 200 concurrent | OK\\|RESOURCE_EXHAUSTED | OK\\|RESOURCE_EXHAUSTED | yes |" in block
    assert "(../bench/results/attacks-amd-epyc-zen4.md)" in block and "| note |" not in block


def test_a_run_outside_bench_results_writes_only_its_files(tmp_path: Path) -> None:
    """``--out`` elsewhere: the current files, no HISTORY.md row, no docs rewritten."""
    doc = _doc(*OK_ROWS)
    path = attacks.record(doc, tmp_path)
    assert path == tmp_path / "attacks-amd-epyc-zen4.json"
    assert json.loads(path.read_text())["rows"][2]["attack"] == "burst of 200 concurrent"
    assert path.with_suffix(".md").read_text() == attacks.markdown(doc)
    assert [k for k, _ in results_io.currents("attacks", tmp_path)] == ["amd-epyc-zen4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attacks-amd-epyc-zen4.json", "attacks-amd-epyc-zen4.md"]
