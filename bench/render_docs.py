"""``python -m bench.render_docs [--check]`` (``make docs-figures``): every generated figure block in README/docs.

Each block sits between ``<!-- <name>:begin ... -->`` / ``<!-- <name>:end -->`` markers and is
rendered from the current result files in ``bench/results`` (``<benchmark>-<cpu kind>.json``), never
typed: a bench run rewrites its file, this script rewrites the blocks, and
tests/unit/test_docs_match_code.py fails while any block disagrees with the files. ``--check``
lists the stale blocks and exits 1 instead of writing.

To add a block: give it markers in the doc and a ``Block`` below whose ``render`` returns the
whole block, markers included.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import headlines
from bench.results_io import RESULTS, ROOT, currents


@dataclass(frozen=True)
class Block:
    doc: Path
    begin: str
    end: str
    render: Callable[[], str]

    def _span(self, text: str) -> tuple[int, int] | None:
        # The begin marker is matched up to its name ("<!-- headline:begin"), so a changed note in it is rewritten.
        prefix = self.begin.split(":begin")[0] + ":begin"
        if prefix not in text or self.end not in text:
            return None
        return text.index(prefix), text.index(self.end) + len(self.end)

    def current(self) -> str | None:
        """The block as the doc has it now (None: the doc or its markers are missing)."""
        text = self.doc.read_text(encoding="utf-8") if self.doc.exists() else ""
        span = self._span(text)
        return text[span[0]:span[1]] if span else None

    def apply(self, text: str) -> str:
        """The text with this block rendered anew."""
        span = self._span(text)
        assert span, f"{self.doc}: no {self.begin} ... {self.end}"
        return text[:span[0]] + self.render() + text[span[1]:]

    def write(self) -> bool:
        text = self.doc.read_text(encoding="utf-8")
        new = self.apply(text)
        if new != text:
            self.doc.write_text(new, encoding="utf-8")
        return new != text


def date_of(data: dict[str, Any]) -> str:
    """When a result was measured, as 'YYYY-MM-DD HH:MM', whichever field its benchmark uses."""
    for holder in (data, data.get("machine"), data.get("environment")):
        if isinstance(holder, dict):
            for key in ("date", "when"):
                if isinstance(holder.get(key), str):
                    return holder[key].replace("T", " ")[:16]
    return "?"


def latest(bench: str) -> tuple[str, dict[str, Any]] | None:
    """The most recently measured current result of a benchmark over every kind of CPU."""
    found = sorted(currents(bench), key=lambda kd: date_of(kd[1]))
    return found[-1] if found else None


def _n(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


# -- README: what it buys ---------------------------------------------------------------------------

def _inference_rows() -> list[str]:
    rows = []
    for kind, r in currents("inference"):
        sent, base = r["sentiment"], r["sentiment_baseline"]
        serving, peer = r["formats"].get(r["serving_format"], {}), r.get("llamacpp")
        mt = r["multi_turn"]
        en = sent.get("en", next(iter(sent.values())))
        cells = [
            f"{kind} ({r['serving_format']}), {date_of(r)[:10]}",
            f"**{_n(en['p50_ms'])} ms** vs {_n(base['en']['p50_ms'])} ms (**{en['p50_ms'] / base['en']['p50_ms']:.2f}×**)",
        ]
        if peer and serving:
            cells.append(f"{serving['decode_tok_s']:.1f} vs {peer['decode_tok_s']:.1f} tok/s "
                         f"(**{serving['decode_tok_s'] / peer['decode_tok_s']:.2f}×**)")
            p = serving["prefill_tok_s"]["512"]
            cells.append(f"{_n(p)} vs {_n(peer['prefill_tok_s']['512'])} tok/s (**{p / peer['prefill_tok_s']['512']:.2f}×**)")
        else:
            cells += ["–", "–"]
        cells.append(f"{_n(mt['ttft_reuse_ms'])} vs {_n(mt['ttft_recompute_ms'])} ms (**{mt['ratio']:.3f}×**)")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _serving_rows() -> list[str]:
    rows = []
    gw = latest("gateway")
    if gw:
        kind, r = gw
        one = {s["name"]: s for s in r["scenarios"] if s["in_flight"] == 1}
        many = {s["name"]: s for s in r["scenarios"] if s["in_flight"] != 1}
        hot, relay = one["exact hit, gateway (hot layer)"], one["exact hit, naive relay baseline"]
        hot_n, relay_n = many["exact hit, gateway (hot layer)"], many["exact hit, naive relay baseline"]
        rows.append(f"| exact hit through the gateway ({kind}, {date_of(r)[:10]}) | **{hot['p50_ms']:.2f} ms** p50, "
                    f"**{_n(hot_n['rps'])} req/s** at {hot_n['in_flight']} in flight | naive two-hop grpc.aio relay: "
                    f"{relay['p50_ms']:.2f} ms, {_n(relay_n['rps'])} req/s |")
    cache = latest("cache")
    if cache:
        kind, r = cache
        name, pairs = list(r["quality"]["sets"].items())[-1]
        ours = pairs["ours"]
        plain = pairs.get("plain @0.86") or next((v for k, v in pairs.items() if k.startswith("plain")), None)
        cross = f", cross-language chat hits {ours['cross_language_chat_hits']}" if "cross_language_chat_hits" in ours else ""
        rows.append(
            f"| semantic tier on the `{name}` pairs nobody tuned on ({ours['pairs']} pairs; {kind}, {date_of(r)[:10]}) | "
            f"**{ours['must_miss_served_count']}** must-miss pairs served{cross}; paraphrases served "
            f"{ours['paraphrases_served_en']:.0%} en / {ours['paraphrases_served_zh']:.0%} zh | "
            + (f"plain cosine threshold 0.86 (GPTCache-style): {plain['must_miss_served_count']} must-miss served |" if plain else "– |"))
    load = latest("load")
    if load:
        kind, r = load
        mix = next((m for m in r["mixes"] if m["mix"] == "classify"), r["mixes"][0])
        rows.append(f"| default ghz load mix `{mix['mix']}` (38% new, 42% repeated, 20% paraphrased; {kind}, "
                    f"{date_of(r)[:10]}) | **{mix['ratio']:.1f}×** the throughput ({mix['rps']['cacheOn']:.0f} req/s) | "
                    f"the same stack with the cache off ({mix['rps']['cacheOff']:.1f} req/s) |")
    return rows


README_BEGIN = "<!-- headline:begin (generated by python -m bench.render_docs from bench/results/*-<cpu kind>.json) -->"
README_END = "<!-- headline:end -->"


INFERENCE_HEAD = [
    "| inference, current run per CPU kind | sentiment p50 (en) vs `generate` + parse in fp32 | decode vs llama.cpp, "
    "same GGUF and threads | prefill 512 tokens vs llama.cpp | chat turn 5 time to first token, KV reused vs recomputed |",
    "|---|---|---|---|---|",
]


def readme_headline() -> str:
    lines = [
        README_BEGIN,
        *INFERENCE_HEAD,
        *_inference_rows(),
        "",
        "| serving | Reprise | the usual approach, same machine and run |",
        "|---|---|---|",
        *_serving_rows(),
        README_END,
    ]
    return "\n".join(lines)


# -- bench/results/README.md: every current file ----------------------------------------------------

CURRENT_BEGIN = "<!-- results:current:begin (generated by python -m bench.render_docs from bench/results/*-<cpu kind>.json) -->"
CURRENT_END = "<!-- results:current:end -->"
HEADLINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "inference": headlines.inference, "cache": headlines.cache, "gateway": headlines.gateway,
    "routing": headlines.routing, "routing-tiny": headlines.routing, "sched": headlines.sched, "load": headlines.load,
    "overload": headlines.overload, "attacks": headlines.attacks,
}


def current_table() -> str:
    lines = [CURRENT_BEGIN, "| benchmark | CPU kind | measured | headline | report |", "|---|---|---|---|---|"]
    for bench, headline in HEADLINES.items():
        for kind, r in currents(bench):
            md = f"{bench}-{kind}.md"
            lines.append(f"| {bench} | {kind} | {date_of(r)} | {headline(r).replace('|', chr(92) + '|')} | [{md}]({md}) |")
    lines.append(CURRENT_END)
    return "\n".join(lines)


def _script_doc(script: ModuleType, bench: str) -> Block:
    """The block a bench script renders (its ``doc_block``, between its ``DOC_BEGIN``/``DOC_END`` in its ``DOC``)
    from the benchmark's most recent current file."""

    def render() -> str:
        found = latest(bench)
        assert found, f"no bench/results/{bench}-<cpu kind>.json"
        return script.doc_block(found[1])

    return Block(script.DOC, script.DOC_BEGIN, script.DOC_END, render)


LOAD_BEGIN = "<!-- bench:load:begin (generated by python -m bench.render_docs from bench/results/load-<cpu kind>.json) -->"
LOAD_END = "<!-- bench:load:end -->"


def load_block() -> str:
    from bench import stack_bench

    found = latest("load")
    assert found, "no bench/results/load-<cpu kind>.json"
    return "\n".join([LOAD_BEGIN, *stack_bench.table(found[1]), "", stack_bench.passes_line(found[1]), LOAD_END])


INFERENCE_BEGIN = "<!-- bench:inference:begin (generated by python -m bench.render_docs from bench/results/inference-<cpu kind>.json) -->"
INFERENCE_END = "<!-- bench:inference:end -->"


def inference_block() -> str:
    """docs/inference.md: the current run of each CPU kind, with links to the full reports."""
    kinds = [kind for kind, _ in currents("inference")]
    links = ", ".join(f"[{k}](../bench/results/inference-{k}.md)" for k in kinds)
    return "\n".join([INFERENCE_BEGIN, *INFERENCE_HEAD, *_inference_rows(), "", f"Full reports: {links}.", INFERENCE_END])


FORMATS_BEGIN = "<!-- bench:formats:begin (generated by python -m bench.render_docs from bench/results/inference-<cpu kind>.json) -->"
FORMATS_END = "<!-- bench:formats:end -->"


def formats_block() -> str:
    """docs/inference.md: int4 weights with bf16 vs int8 activations, alternating in one process, per CPU kind that has both."""
    lines = [FORMATS_BEGIN,
             "| CPU kind (run) | served by auto | prefill 64 / 512 tok/s: bf16 vs int8 | one classify p50: bf16 vs int8 | "
             "one stream decode: bf16 vs int8 | 8 streams together: bf16 vs int8 | weights: bf16 vs int8 |",
             "|---|---|---|---|---|---|---|"]
    for kind, r in currents("inference"):
        ab = r.get("bf16_vs_int8_effect")
        if not ab:
            continue
        b, i = ab["bf16"], ab["int8"]
        served = ab.get("served", "bf16")  # runs before 2026-12-07 served bf16 wherever both could serve
        bf16_mb = ab.get("bf16_weights_mb") or r["formats"].get(r["serving_format"], {}).get("weights_mb")
        rows8 = (f"{b['decode_8_rows_tok_s']:.0f} vs {i['decode_8_rows_tok_s']:.0f} tok/s "
                 f"(**{i['decode_8_rows_tok_s'] / b['decode_8_rows_tok_s']:.2f}×**)") if "decode_8_rows_tok_s" in b else "–"
        lines.append(
            f"| {kind} ({date_of(r)[:10]}) | {served} activations | {b['prefill_64']:.0f} / {b['prefill_512']:.0f} vs "
            f"{i['prefill_64']:.0f} / {i['prefill_512']:.0f} | {b['classify_p50_ms']:.0f} vs {i['classify_p50_ms']:.0f} ms | "
            f"{b['decode']:.1f} vs {i['decode']:.1f} tok/s | {rows8} | "
            f"{_n(bf16_mb) if bf16_mb else '?'} vs {_n(ab['int8_weights_mb'])} MB |"
        )
    return "\n".join([*lines, FORMATS_END])


ROUTING_BEGIN = "<!-- bench:routing:begin (generated by python -m bench.render_docs from bench/results/routing-*.json) -->"
ROUTING_END = "<!-- bench:routing:end -->"


def routing_block() -> str:
    """docs/gateway.md: turn-N TTFT by routing mode, the current run of each model (default, tiny) and CPU kind."""
    lines = [ROUTING_BEGIN, "| run | turn-5 TTFT p50: prefix | round-robin | one replica | prefix / one | round-robin / one |",
             "|---|---:|---:|---:|---:|---:|"]
    for bench in ("routing", "routing-tiny"):
        for kind, r in currents(bench):
            key = f"turn{r['turns']}_ttft_ms_median"
            ms = [f"{r['results'][m][key]:.1f} ms" if r["results"][m][key] < 100 else f"{r['results'][m][key]:.0f} ms"
                  for m in ("prefix", "round-robin", "one replica")]
            lines.append(f"| {date_of(r)[:10]}, {r['model']} model, {r['conversations']} conversations, "
                         f"{r['max_new_tokens']} new tokens per reply ({kind}) | {' | '.join(ms)} | "
                         f"**{r['prefix_over_one']:.2f}×** | {r['round_robin_over_one']:.2f}× |")
    return "\n".join([*lines, ROUTING_END])


GATEWAY_BEGIN = "<!-- bench:gateway:begin (generated by python -m bench.render_docs from bench/results/gateway-<cpu kind>.json) -->"
GATEWAY_END = "<!-- bench:gateway:end -->"


def gateway_block() -> str:
    """docs/gateway.md: the most recent gateway benchmark, as its report says it (headings one level down)."""
    from bench.gateway import bench_gateway

    found = latest("gateway")
    assert found, "no bench/results/gateway-<cpu kind>.json"
    kind, r = found
    body = bench_gateway.markdown(r).removeprefix("# Gateway benchmark").strip()
    return "\n".join([GATEWAY_BEGIN, f"{date_of(r)} UTC, {kind}. " + body, GATEWAY_END])


def _concurrency_doc() -> Block:
    from bench.inference import concurrency

    return Block(concurrency.DOC, concurrency.DOC_BEGIN, concurrency.DOC_END,
                 lambda: concurrency.doc_block(concurrency.current_results()))


def _peer_doc() -> Block:
    from bench.inference import peer_bench

    def render() -> str:
        found = latest("peer")
        assert found, "no bench/results/peer-<cpu kind>.json"
        return peer_bench.DOC_BEGIN + "\n" + peer_bench.markdown(found[1]) + peer_bench.DOC_END

    return Block(peer_bench.DOC, peer_bench.DOC_BEGIN, peer_bench.DOC_END, render)


def blocks() -> list[Block]:
    # Imported here: the bench scripts import this module to rewrite the docs after a run.
    from bench import attacks
    from bench.cache import bench_cache
    from bench.inference import chat_quality, sentiment_hard

    return [
        Block(ROOT / "README.md", README_BEGIN, README_END, readme_headline),
        Block(RESULTS / "README.md", CURRENT_BEGIN, CURRENT_END, current_table),
        Block(ROOT / "docs" / "deploy.md", LOAD_BEGIN, LOAD_END, load_block),
        Block(ROOT / "docs" / "inference.md", INFERENCE_BEGIN, INFERENCE_END, inference_block),
        Block(ROOT / "docs" / "inference.md", FORMATS_BEGIN, FORMATS_END, formats_block),
        Block(ROOT / "docs" / "gateway.md", ROUTING_BEGIN, ROUTING_END, routing_block),
        Block(ROOT / "docs" / "gateway.md", GATEWAY_BEGIN, GATEWAY_END, gateway_block),
        _script_doc(bench_cache, "cache"),
        _script_doc(chat_quality, "chat-quality"),
        _script_doc(sentiment_hard, "sentiment-hard"),
        _script_doc(attacks, "attacks"),  # docs/deploy.md, "Attack sweep"
        _concurrency_doc(),  # docs/inference.md blocks their own scripts also write
        _peer_doc(),
    ]


def stale() -> list[str]:
    """Docs whose generated block differs from what the current result files render."""
    out = []
    for b in blocks():
        have = b.current()
        if have is None:
            out.append(f"{b.doc.relative_to(ROOT)}: lost its markers {b.begin[:40]}...")
        elif have != b.render():
            out.append(f"{b.doc.relative_to(ROOT)}: block {b.begin[5:b.begin.index(':begin')]} is stale")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list stale blocks and exit 1 instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for b in blocks():
        if b.current() is None:
            print(f"{b.doc.relative_to(ROOT)}: no markers for {b.begin[:40]}...; skipped", file=sys.stderr)
        elif b.write():
            print(f"rewrote {b.doc.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
