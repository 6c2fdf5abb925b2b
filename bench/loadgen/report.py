"""ghz's JSON report (``--format json``) built from a :class:`~bench.loadgen.runner.RunResult`.

Field names, units and statistics follow ghz's ``runner.Report``: durations
are integer nanoseconds (Go's ``time.Duration``), ``rps`` is count / total
seconds, ``latencyDistribution`` holds the 10/25/50/75/90/95/99th percentiles
by ghz's rank rule, ``histogram`` has 11 buckets whose ``mark`` is in seconds,
``statusCodeDistribution`` is keyed by Go status names ("OK",
"ResourceExhausted") and ``errorDistribution`` by ghz's error strings. As with
ghz, the first ``skipFirst`` results are left out, and fastest/slowest/
average/histogram/percentiles use only OK calls unless ``count-errors``.

Reprise adds one key, ``reprise``, that ghz consumers ignore: the cache status
of every counted call (overall and per pass through the data array, because a
ghz data array is cycled and its repeats grow with every pass), time to first
message for streams, and the client's own CPU use. Each detail also carries
its ``cache`` status and ``requestNumber`` (data element = requestNumber mod
len(data)).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from bench.loadgen.runner import CallResult, RunResult, passes

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
HITS = ("EXACT", "SEMANTIC")


def ghz_percentiles(sorted_s: Sequence[float]) -> list[dict[str, int]]:
    """ghz's ``latencies()``: the value at rank floor(p/100 * n), one lower when that is whole."""
    out = []
    n = len(sorted_s)
    for p in PERCENTILES:
        ip = p / 100 * n
        di = int(ip)
        if ip == di:
            di -= 1
        value = sorted_s[max(di, 0)]
        out.append({"percentage": p, "latency": int(round(value * 1e9))} if value > 0 else {"percentage": 0, "latency": 0})
    return out


def ghz_histogram(sorted_s: Sequence[float]) -> list[dict[str, float]]:
    """ghz's ``histogram()``: 10 equal buckets from fastest plus one at slowest; marks in seconds."""
    fastest, slowest = sorted_s[0], sorted_s[-1]
    bc = 10
    step = (slowest - fastest) / bc
    marks = [fastest + step * i for i in range(bc)] + [slowest]
    counts = [0] * (bc + 1)
    bi = 0
    i = 0
    while i < len(sorted_s):
        if sorted_s[i] <= marks[bi]:
            counts[bi] += 1
            i += 1
        elif bi < bc:
            bi += 1
        else:  # float rounding past the last mark
            counts[bc] += 1
            i += 1
    return [{"mark": m, "count": c, "frequency": c / len(sorted_s)} for m, c in zip(marks, counts)]


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _rfc3339_nano(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def primary_cache(result: CallResult) -> str:
    """One cache label per call: the only field, or "a/b" for Analyze's two parts."""
    if not result.cache:
        return "-"
    return "/".join(result.cache.values())


def _cache_summary(results: Sequence[CallResult], data_length: int) -> dict[str, Any]:
    ok = [r for r in results if r.status == "OK"]
    fields: dict[str, Counter[str]] = {}
    for r in ok:
        for name, status in r.cache.items():
            fields.setdefault(name, Counter())[status] += 1

    def hit_ratio(rs: Sequence[CallResult]) -> float | None:
        """Share of OK calls whose every cache part was a hit."""
        rs = [r for r in rs if r.status == "OK" and r.cache]
        if not rs:
            return None
        return sum(all(s in HITS for s in r.cache.values()) for r in rs) / len(rs)

    per_pass = []
    for k, group in enumerate(passes(results, data_length)):
        per_pass.append({
            "pass": k,
            "requests": len(group),
            "hitRatio": hit_ratio(group),
            "distribution": dict(Counter(primary_cache(r) for r in group if r.status == "OK")),
        })
    return {
        "fields": {name: dict(counter) for name, counter in fields.items()},
        "hitRatio": hit_ratio(results),
        "dataLength": data_length,
        "perPass": per_pass,
    }


def build_report(run: RunResult, *, details: bool = True) -> dict[str, Any]:
    cfg = run.config
    counted = run.results[cfg.skip_first:]
    statuses = Counter(r.status for r in counted)
    errors = Counter(r.error for r in counted if r.error)
    report: dict[str, Any] = {
        "date": _rfc3339(run.started_ns + run.total_ns),
        "endReason": run.end_reason,
        "options": cfg.as_ghz_options(),
        "count": len(counted),
        "total": run.total_ns,
        "average": 0,
        "fastest": 0,
        "slowest": 0,
        "rps": len(counted) / (run.total_ns / 1e9) if run.total_ns else 0.0,
        "errorDistribution": dict(errors),
        "statusCodeDistribution": dict(statuses),
        "latencyDistribution": None,
        "histogram": None,
        "details": None,
    }
    if cfg.name:
        report["name"] = cfg.name
    if cfg.tags:
        report["tags"] = dict(cfg.tags)
    stats = [r for r in counted if cfg.count_errors or r.status == "OK"]
    if stats:
        lat = sorted(r.latency_ns / 1e9 for r in stats)
        report["average"] = int(sum(lat) / len(lat) * 1e9)
        report["fastest"] = int(lat[0] * 1e9)
        report["slowest"] = int(lat[-1] * 1e9)
        report["histogram"] = ghz_histogram(lat)
        report["latencyDistribution"] = ghz_percentiles(lat)
    if details and counted:
        report["details"] = [
            {"timestamp": _rfc3339_nano(r.timestamp_ns), "latency": r.latency_ns, "error": r.error,
             "status": r.status, "cache": primary_cache(r), "requestNumber": r.request_number}
            for r in counted
        ]
    extras: dict[str, Any] = {
        "generator": "bench/load.py (grpc.aio, ghz-compatible)",
        "method": run.method.full_name,
        "serverStreaming": run.method.server_streaming,
        "cache": _cache_summary(counted, len(cfg.data)),
        "client": {"cpuSeconds": round(run.client_cpu_s, 3),
                   "cpuPercentOfOneCore": round(100 * run.client_cpu_s / (run.total_ns / 1e9), 1) if run.total_ns else 0},
    }
    if run.method.server_streaming:
        firsts = sorted(r.first_message_ns / 1e9 for r in counted if r.status == "OK" and r.first_message_ns)
        if firsts:
            extras["firstMessageLatencyDistribution"] = ghz_percentiles(firsts)
    if cfg.source:
        extras["config"] = cfg.source
    report["reprise"] = extras
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One human line: count, rps, p50/p99 in ms, status codes, hit ratio."""
    dist = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or []}
    hit = report.get("reprise", {}).get("cache", {}).get("hitRatio")
    hit_text = "n/a" if hit is None else f"{hit:.0%}"
    return (f"{report['count']} calls in {report['total'] / 1e9:.1f}s = {report['rps']:.1f} req/s, "
            f"p50 {dist.get(50, 0) / 1e6:.1f} ms, p99 {dist.get(99, 0) / 1e6:.1f} ms, "
            f"status {report['statusCodeDistribution']}, cache hits {hit_text}")
