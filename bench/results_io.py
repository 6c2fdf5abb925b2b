"""Where benchmark results go: one current file per benchmark and kind of CPU, one history row per run.

Every bench script ends the same way::

    from bench import results_io
    kind = results_io.cpu_kind()
    results_io.write_current("gateway", report, markdown, kind)      # bench/results/gateway-<kind>.{json,md}
    results_io.append_history("gateway", headlines.gateway(report), kind)   # a row of bench/results/HISTORY.md

so ``bench/results`` holds what is true now on each kind of machine (earlier runs are in git and in
HISTORY.md's rows, which name their commit), and docs quote those files through ``bench.render_docs``.
Timings on the shared 2-core machines are noisy: the history keeps same-run ratios, not absolute times.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HISTORY = RESULTS / "HISTORY.md"
HISTORY_HEAD = """# Benchmark history

One row per benchmark run, appended by the bench scripts (`bench/results_io.py::append_history`):
the date (UTC), the kind of CPU, the commit the run measured, and the run's headline ratios (each
measured against its baseline within that run; absolute times on the shared 2-core machines move
with the neighbours). The current figures of each benchmark and CPU kind are in
`<benchmark>-<cpu kind>.{json,md}` beside this file (what each benchmark measures: README.md here).
Rows up to 2026-12-07 05:47 were read from the earlier result files by a one-off script
(`bench/history_backfill.py`, in git at the commit that added this file): their commit is the one
that recorded the result (the code measured is the commit before it, plus that commit's change),
"run N" is the run's number in docs/inference.md, and `amd-epyc` / `unrecorded` mark results that
did not name the CPU's generation. The full reports of those runs are in git: `git log --stat --
bench/results`, then `git show <commit>:bench/results/<file>`.

| date (UTC) | CPU kind | commit | benchmark | headline |
|---|---|---|---|---|
"""


def _cpuinfo() -> dict[str, str]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if v}


def kind_of(name: str, family: int, model: int, flags: set[str]) -> str:
    """A file-name slug for a kind of CPU: vendor, line and generation (family/model tell Zen 3/4/5 apart)."""
    if "AMD" in name:
        line = "amd-epyc" if "EPYC" in name else "amd"
        zen = {23: "zen2", 26: "zen5"}.get(family)
        if family == 25:
            zen = "zen4" if model in range(0x10, 0x20) or model in range(0x60, 0x80) or model in range(0xA0, 0xB0) else "zen3"
        return f"{line}-{zen}" if zen else line
    if "Intel" in name:
        return ("intel-xeon" if "Xeon" in name else "intel") + ("-amx" if "amx_tile" in flags else "")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "cpu"


def cpu_kind() -> str:
    """This machine's kind, e.g. ``amd-epyc-zen4`` or ``intel-xeon-amx`` (the brand string alone says "AMD EPYC")."""
    info = _cpuinfo()
    return kind_of(info.get("model name", "cpu"), int(info.get("cpu family", "0")), int(info.get("model", "0")),
                   set(info.get("flags", "").split()))


def cpu_name() -> str:
    info = _cpuinfo()
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def commit() -> str:
    """The short commit the run measured (the work tree may hold others' unfinished edits too)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime())


def current_path(bench: str, kind: str | None = None, out: Path = RESULTS) -> Path:
    """``bench/results/<bench>-<kind>.json``."""
    return out / f"{bench}-{kind or cpu_kind()}.json"


def write_current(bench: str, data: dict[str, Any], md: str, kind: str | None = None, out: Path = RESULTS) -> Path:
    """Replace this benchmark's current result on this kind of CPU (``.json`` and ``.md``); returns the json path."""
    kind = kind or cpu_kind()
    data = {"cpu_kind": kind, **data}
    path = current_path(bench, kind, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(md if md.endswith("\n") else md + "\n", encoding="utf-8")
    return path


def append_history(bench: str, headline: str, kind: str | None = None, *, date: str | None = None,
                   commit_id: str | None = None, history: Path = HISTORY) -> str:
    """Append one row (date, CPU kind, commit, benchmark, headline) to HISTORY.md; returns the row."""
    cell = headline.replace("|", "\\|").replace("\n", " ")
    row = f"| {date or now()} | {kind or cpu_kind()} | {commit_id or commit()} | {bench} | {cell} |\n"
    if not history.exists():
        history.write_text(HISTORY_HEAD, encoding="utf-8")
    with history.open("a", encoding="utf-8") as f:
        f.write(row)
    return row


def currents(bench: str, out: Path = RESULTS) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, data) of every current file of a benchmark, in kind order."""
    for path in sorted(out.glob(f"{bench}-*.json")):
        kind = path.stem[len(bench) + 1:]
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("cpu_kind") == kind:  # not another benchmark's file that shares the prefix (cache-burst-...)
            yield kind, data
