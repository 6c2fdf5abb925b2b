"""One line of same-run ratios per benchmark result: the ``headline`` of its HISTORY.md row.

Each function takes the benchmark's current result (the dict its ``.json`` holds) and says what a
reader compares run to run; absolute times go with the machine's neighbours, ratios much less.
"""

from __future__ import annotations

from typing import Any


def _x(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}x"


def inference(r: dict[str, Any]) -> str:
    """Sentiment vs the generate baseline, decode/prefill vs llama.cpp, turn-5 TTFT vs recompute, batching."""
    sent, base = r["sentiment"], r["sentiment_baseline"]
    parts = [f"{r['serving_format']}; sentiment " + " / ".join(_x(sent[l]["p50_ms"] / base[l]["p50_ms"]) for l in sent) + " baseline"]
    peer, serving = r.get("llamacpp"), r["formats"].get(r["serving_format"], {})
    if peer and serving:
        parts.append(f"decode {_x(serving['decode_tok_s'] / peer['decode_tok_s'])} llama.cpp "
                     f"({serving['decode_tok_s']:.1f} tok/s)")
        parts.append("prefill 64 / 512 " + " / ".join(
            _x(serving["prefill_tok_s"][n] / peer["prefill_tok_s"][n]) for n in ("64", "512")))
    parts.append(f"turn-5 TTFT {_x(r['multi_turn']['ratio'], 3)} recompute")
    c = r["classify_16_concurrent"]
    parts.append(f"batching {_x(c['batched']['requests_per_s'] / c['one_at_a_time']['requests_per_s'])}")
    if "zh" in sent:
        parts.append(f"accuracy en {sent.get('en', {}).get('accuracy', float('nan')):.1%} / zh {sent['zh']['accuracy']:.1%}")
    return "; ".join(parts)


def gateway(r: dict[str, Any]) -> str:
    """Exact hits through the gateway vs a naive relay (one in flight), and the targets' figures."""
    one = {s["name"]: s for s in r["scenarios"] if s.get("in_flight") == 1}
    parts = []
    hot, relay = one.get("exact hit, gateway (hot layer)"), one.get("exact hit, naive relay baseline")
    if hot and relay:
        parts.append(f"exact hit p50 {hot['p50_ms']:.2f} ms vs relay {relay['p50_ms']:.2f} ms ({_x(hot['p50_ms'] / relay['p50_ms'])})")
    parts += [f"{t['what']}: {t['measured']:,.{0 if t['measured'] > 100 else 2}f}" for t in r.get("targets", [])
              if not t["what"].startswith("exact hit p50")]
    return "; ".join(parts)


def cache(r: dict[str, Any]) -> str:
    """Cache truth on the never-tuned-on set and a semantic lookup's latency at the largest size measured."""
    parts = []
    sets = r.get("quality", {}).get("sets", {})
    if sets:
        name = list(sets)[-1]  # the last set is the one nobody tuned on
        ours = sets[name]["ours"]
        parts.append(f"{name}: paraphrases served en {ours['paraphrases_served_en']:.0%} / zh {ours['paraphrases_served_zh']:.0%}, "
                     f"must-miss served {ours['must_miss_served_count']}")
    lat = r.get("latency") or []
    if lat:
        big = lat[-1]
        parts.append(f"semantic lookup p50 {big['semantic_p50_ms']:.1f} ms at {big['entries']:,} entries ({big['index']})")
    burst = r.get("burst")
    if burst and "batched" in burst and "one at a time" in burst:
        parts.append(f"burst of {burst['lookups']}: wall {_x(burst['batched']['wall_ms'] / burst['one at a time']['wall_ms'])} batched vs one at a time")
    return "; ".join(parts)


def routing(r: dict[str, Any]) -> str:
    return (f"turn-5 TTFT prefix routing {_x(r['prefix_over_one'])} one replica, round-robin {_x(r['round_robin_over_one'])}"
            f" ({r.get('model', '?')} model)")


def sched(r: dict[str, Any]) -> str:
    parts = []
    if "short_behind_long" in r:
        parts.append(f"short Classify p99 behind long prompts {_x(r['short_behind_long']['p99_over_idle_p50'])} its idle p50")
    if "chats_with_deadlines" in r:
        c = r["chats_with_deadlines"]
        parts.append(f"chats with deadlines: {c['finished_in_time']}/{c['admitted']} admitted finished in time, "
                     f"{c['refused']} refused, {c['late']} late")
    return f"{r.get('model', '?')} model; " + "; ".join(parts)


def load(r: dict[str, Any]) -> str:
    """Throughput with the cache on vs off, per mix."""
    return "cache on / off: " + ", ".join(f"{m['mix']} {_x(m['ratio'], 1)}" for m in r["mixes"])


def overload(r: dict[str, Any]) -> str:
    """``bench.gateway.overload``: each gateway's last round (the first runs before a gateway has seen a miss)."""

    def last(name: str) -> str:
        run = r["gateways"][name][-1]
        return f"{run['rps']} req/s, p99 {run['p99_ms']:.0f} ms, {run['statuses'].get('SEMANTIC', 0)}/{run['requests']} SEMANTIC"

    first, *others = r["gateways"]
    ratio = r["gateways"][first][-1]["rps"] / max(r["gateways"][others[0]][-1]["rps"], 1e-9) if others else float("nan")
    return "; ".join(f"{name}: {last(name)}" for name in r["gateways"]) + f" ({_x(ratio, 1)} req/s, model {r['model']}, last of {r['rounds']} rounds)"


def attacks(r: dict[str, Any]) -> str:
    """``bench.attacks``: rows ok of all, the rows not ok by name, statuses that mean a bug, whether every service stayed up."""
    t = r["totals"]
    bad = [row["attack"] for row in r["rows"] if not row["ok"]]
    parts = [f"{t['ok']}/{t['rows']} ok" + (f" (not ok: {', '.join(bad)})" if bad else ""),
             f"{t['internal_or_unknown']} INTERNAL/UNKNOWN",
             f"services exited: {', '.join(t['services_exited'])}" if t["services_exited"] else "services up"]
    return "; ".join(parts)
