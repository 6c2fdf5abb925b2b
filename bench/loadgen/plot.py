"""PNG latency plots of ghz-format reports (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

RUN_COLORS = ("#7f7f7f", "#2ca02c", "#1f77b4", "#d62728")
COLORS = {"MISS": "#d62728", "EXACT": "#2ca02c", "SEMANTIC": "#1f77b4", "BYPASS": "#ff7f0e", "-": "#7f7f7f"}


def _points(report: Mapping[str, Any]) -> list[tuple[float, float, str, str]]:
    """(seconds since start, latency ms, cache label, status) per counted call."""
    details = report.get("details") or []
    if not details:
        return []
    stamps = [datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp() for d in details]
    t0 = min(stamps)
    return [(t - t0, d["latency"] / 1e6, d.get("cache", "-"), d["status"]) for t, d in zip(stamps, details)]


def _color(label: str, status: str) -> str:
    if status != "OK":
        return "#000000"
    return COLORS.get(label.split("/")[0], "#9467bd")


def plot_report(report: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Latency of every call over time (coloured by cache status) and the latency CDF."""
    points = _points(report)
    fig, (ax_time, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in sorted({(p[2], p[3]) for p in points}):
        xs = [p[0] for p in points if (p[2], p[3]) == label]
        ys = [p[1] for p in points if (p[2], p[3]) == label]
        name = label[0] if label[1] == "OK" else label[1]
        ax_time.scatter(xs, ys, s=8, alpha=0.7, color=_color(*label), label=f"{name} ({len(xs)})")
    ax_time.set_yscale("log")
    ax_time.set_xlabel("seconds since start")
    ax_time.set_ylabel("latency (ms, log)")
    ax_time.legend(loc="upper right", fontsize=8)
    ax_time.grid(True, which="both", alpha=0.3)
    ok = sorted(p[1] for p in points if p[3] == "OK")
    if ok:
        ax_cdf.plot(ok, [(i + 1) / len(ok) for i in range(len(ok))], drawstyle="steps-post")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (ms, log)")
    ax_cdf.set_ylabel("fraction of OK calls")
    ax_cdf.grid(True, which="both", alpha=0.3)
    fig.suptitle(title or f"{report.get('options', {}).get('call', '')}: {report['rps']:.1f} req/s")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(reports: Mapping[str, Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Latency CDFs and throughput of several runs of the same mix (e.g. cache on vs off)."""
    fig, (ax_cdf, ax_rps) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for k, (name, report) in enumerate(reports.items()):
        ok = sorted(p[1] for p in _points(report) if p[3] == "OK")
        if ok:
            ax_cdf.plot(ok, [(i + 1) / len(ok) for i in range(len(ok))], drawstyle="steps-post", label=name,
                        color=RUN_COLORS[k % len(RUN_COLORS)])
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (ms, log)")
    ax_cdf.set_ylabel("fraction of OK calls")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend()
    names = list(reports)
    values = [reports[n]["rps"] for n in names]
    bars = ax_rps.bar(names, values, color=[RUN_COLORS[k % len(RUN_COLORS)] for k in range(len(names))])
    ax_rps.bar_label(bars, fmt="%.1f")
    ax_rps.set_ylabel("requests / s")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
