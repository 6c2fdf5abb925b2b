"""Generated docs must not drift: the flag reference (from the parsers), every figure block (from bench/results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import render_docs, results_io
from devtools import flagdoc

ROOT = Path(__file__).resolve().parents[2]


def test_flag_reference_matches_the_parsers() -> None:
    text = flagdoc.DOC.read_text(encoding="utf-8")
    assert flagdoc.BEGIN in text and flagdoc.END in text, "docs/configuration.md lost its generated flags block"
    block = text[text.index(flagdoc.BEGIN) : text.index(flagdoc.END) + len(flagdoc.END)]
    assert block == flagdoc.render(), "flags are stale: run `python -m devtools.flagdoc --write`"


def test_readme_links_the_flag_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/configuration.md" in readme and flagdoc.BEGIN not in readme


def test_writing_the_flags_into_the_readme_goes_to_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--write README.md` (the command before the move) writes docs/configuration.md and says so."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# r\n")
    (tmp_path / "docs" / "configuration.md").write_text(f"x\n{flagdoc.BEGIN}\n{flagdoc.END}\n")
    assert flagdoc.target(tmp_path / "README.md") == (tmp_path / "docs" / "configuration.md").resolve()
    assert "moved" in capsys.readouterr().err
    (tmp_path / "other.md").write_text("no block")
    with pytest.raises(SystemExit, match="docs/configuration.md"):
        flagdoc.target(tmp_path / "other.md")


def test_every_generated_figure_block_matches_the_result_files() -> None:
    """README/docs quote bench/results/*-<cpu kind>.json only through bench.render_docs, never by hand."""
    assert render_docs.stale() == [], "docs are stale: run `python -m bench.render_docs` (make docs-figures)"


def test_a_hand_edited_figure_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    block = render_docs.Block(doc, "<!-- t:begin (generated) -->", "<!-- t:end -->", lambda: "<!-- t:begin (generated) -->\n1.5x\n<!-- t:end -->")
    doc.write_text("intro\n<!-- t:begin -->\n<!-- t:end -->\nrest\n")
    assert block.write() and doc.read_text() == "intro\n<!-- t:begin (generated) -->\n1.5x\n<!-- t:end -->\nrest\n"
    doc.write_text(doc.read_text().replace("1.5x", "1.6x"))  # a figure typed over
    assert block.current() != block.render()
    assert block.write() and "1.5x" in doc.read_text() and block.current() == block.render()


def test_current_files_and_history_rows(tmp_path: Path) -> None:
    out, history = tmp_path / "results", tmp_path / "HISTORY.md"
    path = results_io.write_current("gateway", {"when": "2026-12-07 06:00", "x": 1}, "# md", "amd-epyc-zen4", out)
    assert path.name == "gateway-amd-epyc-zen4.json" and path.with_suffix(".md").read_text() == "# md\n"
    results_io.write_current("gateway", {"x": 2}, "# md", "intel-xeon", out)
    (out / "gateway-burst-x.json").write_text(json.dumps({"cpu_kind": "other"}))  # another benchmark's file
    assert [(k, d["x"]) for k, d in results_io.currents("gateway", out)] == [("amd-epyc-zen4", 1), ("intel-xeon", 2)]
    results_io.write_current("gateway", {"x": 3}, "# md", "intel-xeon", out)  # a new run replaces the current one
    assert dict(results_io.currents("gateway", out))["intel-xeon"]["x"] == 3
    results_io.append_history("gateway", "a | b 1.5x", "intel-xeon", date="2026-12-07 06:00", commit_id="abc1234", history=history)
    results_io.append_history("cache", "c", "intel-xeon", date="2026-12-07 06:01", commit_id="abc1234", history=history)
    rows = [l for l in history.read_text().splitlines() if l.startswith("| 2026")]
    assert rows == ["| 2026-12-07 06:00 | intel-xeon | abc1234 | gateway | a \\| b 1.5x |",
                    "| 2026-12-07 06:01 | intel-xeon | abc1234 | cache | c |"]


def test_cpu_kinds() -> None:
    assert results_io.kind_of("AMD EPYC 9R14", 25, 17, set()) == "amd-epyc-zen4"
    assert results_io.kind_of("AMD EPYC 7R13", 25, 1, set()) == "amd-epyc-zen3"
    assert results_io.kind_of("AMD EPYC", 26, 2, set()) == "amd-epyc-zen5"
    assert results_io.kind_of("Intel(R) Xeon(R) Processor", 6, 207, {"amx_tile"}) == "intel-xeon-amx"
    assert results_io.kind_of("Intel(R) Xeon(R) Processor", 6, 207, set()) == "intel-xeon"
    assert results_io.cpu_kind()  # this machine's, from /proc/cpuinfo


def test_every_current_result_has_a_history_row() -> None:
    rows = results_io.HISTORY.read_text(encoding="utf-8").splitlines()
    for bench in render_docs.HEADLINES:
        for kind, _ in results_io.currents(bench):
            assert any(f"| {kind} |" in row and f"| {bench} |" in row for row in rows), f"{bench}-{kind}.json has no HISTORY.md row"


def test_the_files_the_readme_names_exist() -> None:
    """README's "where to change what" and layout name real paths: a move must update them."""
    import glob
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tops = ("gateway/", "cache_svc/", "inference_svc/", "reprise/", "devtools/", "bench/", "tests/", "protos/", "deploy/", "docs/")
    named = {t for t in re.findall(r"`([\w.*/-]+/[\w.*/-]*)`", text) if t.startswith(tops)}
    assert "gateway/core/flow.py" in named
    links = {t.split("#")[0] for t in re.findall(r"\]\(([^)#][^)]*)\)", text) if not t.startswith("http")}
    missing = sorted(t for t in named | links if not glob.glob(str(ROOT / t.rstrip("/"))))
    assert not missing, f"README names paths that do not exist: {missing}"
