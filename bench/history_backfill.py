"""One-off: HISTORY.md rows for the runs recorded before ``bench/results_io.py`` (2026-12-07).

    python -m bench.history_backfill > rows.md

Reads, from git so it can be re-run after the files are gone: every dated inference result
(``bench/results/inference-<date>-<machine>.md``, one per run; the run numbers are the ones
docs/inference.md gave them) plus ``inference.md`` (run 21), parsing each report's targets table;
and every committed version of the gateway, cache, routing, scheduling and load results, through the
same headline functions new runs use. Prints the rows, oldest first.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from bench import headlines
from bench.results_io import ROOT, kind_of

#: The last commit that had every dated inference file and the docs page that numbered the runs
#: (the parent of the commit that replaced them with HISTORY.md).
BEFORE = "a0ba2e0^"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def run_numbers() -> dict[str, int]:
    doc = git("show", f"{BEFORE}:docs/inference.md")
    return {m[0]: int(m[1]) for m in re.findall(r"\[`(inference-[^`]+)\.md`\]\([^)]*\) \((?:run )?(\d+)\)", doc)}


def inference_kind(stem: str, machine_line: str, serving: str) -> str:
    """The kind from the report's CPU line; the brand string alone ("AMD EPYC", runs 1-4) needs the file name."""
    m = re.search(r"family (\d+) model (\d+)", machine_line)
    name = "AMD EPYC" if "AMD" in machine_line else "Intel Xeon" if "Xeon" in machine_line else machine_line
    # Every Intel run that served bf16 had AMX (docs/inference.md, Results); those without bf16 hid both.
    flags = {"amx_tile"} if "Xeon" in name and serving.endswith("bf16") else set()
    if m:
        return kind_of(name, int(m[1]), int(m[2]), flags)
    zen = re.search(r"zen\d", stem)
    # Runs 1, 2 and 4 ran on the Zen 5 before the report printed family and model (docs/inference.md, Results).
    return f"amd-epyc-{zen[0] if zen else 'zen5'}" if "AMD" in name else kind_of(name, 0, 0, flags)


def inference_row(path: str, text: str, run: int | None) -> tuple[str, str, str]:
    """(date, kind, headline) from a report's header lines and targets table, in headlines.inference's words."""
    date_line = next(l for l in text.splitlines() if re.match(r"20\d\d-\d\d-\d\d \d\d:\d\d", l))
    date = date_line[:16]
    serving = re.search(r"Serving format: \*\*([^*]+)\*\*", text)[1]

    def ratio(row: str) -> str:
        m = re.search(rf"^\| {row}[^\n]*\| ([0-9.]+x) \|", text, re.M)
        return m[1] if m else "?"

    def acc(lang: str) -> str:
        m = re.search(rf"^\| sentiment {lang} accuracy >= 90% \| ([0-9.]+%)", text, re.M)
        return m[1] if m else "?"

    decode = re.search(r"^\| decode >= 0\.8x llama\.cpp \| ([0-9.]+) vs", text, re.M)
    batching = re.search(r"one at a time [0-9.]+ req/s \(([0-9.]+x)\)", text)
    parts = [f"{serving}; sentiment {ratio('sentiment en latency')} / {ratio('sentiment zh latency')} baseline"]
    if decode:
        parts.append(f"decode {ratio('decode')} llama.cpp ({decode[1]} tok/s)")
        parts.append(f"prefill 64 / 512 {ratio('prefill 64')} / {ratio('prefill 512')}")
    parts.append(f"turn-5 TTFT {ratio('turn-5 TTFT')} recompute")
    if batching:
        parts.append(f"batching {batching[1]}")
    parts.append(f"accuracy en {acc('en')} / zh {acc('zh')}")
    head = (f"run {run}: " if run else "") + "; ".join(parts)
    return date, inference_kind(path, date_line, serving), head


def added_in(path: str) -> str:
    return git("log", "--diff-filter=A", "--format=%h", "-1", BEFORE, "--", path).strip()


def inference_rows() -> list[tuple[str, str, str, str, str]]:
    runs = run_numbers()
    files = [p for p in git("ls-tree", "--name-only", BEFORE, "bench/results/").split()
             if re.match(r"bench/results/inference-20\d\d-.*\.md$", p)]
    rows = []
    for path in files + ["bench/results/inference.md"]:
        stem = path.rsplit("/", 1)[1][:-3]
        text = git("show", f"{BEFORE}:{path}")
        run = runs.get(stem, 21 if stem == "inference" else None)
        date, kind, head = inference_row(stem, text, run)
        commit = git("log", "--format=%h", "-1", BEFORE, "--", path).strip() if stem == "inference" else added_in(path)
        rows.append((date, kind, commit, "inference", head))
    return rows


def _machine_kind(r: dict[str, Any], commit_date: str) -> str:
    text = json.dumps(r.get("machine", r.get("environment", "")))
    m = re.search(r"family (\d+) model (\d+)", text)
    if m:
        return kind_of("AMD EPYC" if "AMD" in text else "Intel Xeon", int(m[1]), int(m[2]), set())
    if "AMD" in text:
        return "amd-epyc"
    if "Xeon" in text:
        # 2026-11-22's Xeon served bf16 (inference run 3 that day): the AMX one.
        return "intel-xeon-amx" if commit_date.startswith("2026-11-22") else "intel-xeon"
    # Results of 2026-12-07 that name no CPU ran on that day's 2-vCPU machine (AMD EPYC family 25 model 17,
    # the commits say "AMD EPYC"): bench-routing, bench-sched, bench-cache.
    return "amd-epyc-zen4" if commit_date.startswith("2026-12-07") else "unrecorded"


def _date(r: dict[str, Any], commit_date: str) -> str:
    for value in (r.get("when"), r.get("date"), r.get("environment", {}).get("date") if isinstance(r.get("environment"), dict) else None):
        if isinstance(value, str) and re.match(r"20\d\d-\d\d-\d\d", value):
            return value.replace("T", " ")[:16]
    return commit_date[:16]


SIMPLE = {"gateway": ("gateway.json", headlines.gateway), "cache": ("cache.json", headlines.cache),
          "routing": ("routing.json", headlines.routing), "sched": ("sched.json", headlines.sched),
          "load": ("load-summary.json", headlines.load)}


def simple_rows() -> list[tuple[str, str, str, str, str]]:
    rows = []
    for bench, (name, headline) in SIMPLE.items():
        path = f"bench/results/{name}"
        seen = set()
        for line in git("log", "--format=%h %ad", "--date=format:%Y-%m-%d %H:%M", BEFORE, "--", path).splitlines():
            commit, commit_date = line.split(" ", 1)
            try:
                r = json.loads(git("show", f"{commit}:{path}"))
                head = headline(r)
            except (subprocess.CalledProcessError, KeyError, TypeError, ValueError, IndexError) as e:
                print(f"skipped {path} at {commit}: {e!r}", file=sys.stderr)
                continue
            date = _date(r, commit_date)
            if (date, head) in seen:  # a commit that touched the file without a new run
                continue
            seen.add((date, head))
            measured = r.get("environment", {}).get("commit") if isinstance(r.get("environment"), dict) else None
            name = f"{bench}-tiny" if bench == "routing" and r.get("model") == "tiny" else bench  # as bench.routing names it
            rows.append((date, _machine_kind(r, date), measured or commit, name, head))
    return rows


def main() -> None:
    for date, kind, commit, bench, head in sorted(inference_rows() + simple_rows()):
        print(f"| {date} | {kind} | {commit} | {bench} | {head.replace('|', chr(92) + '|')} |")


if __name__ == "__main__":
    main()
