"""What the CPU running the tests has, read independently of the code under test."""

from __future__ import annotations

from pathlib import Path


def cpu_has_avx2() -> bool:
    """The AVX2 kernel's requirements (AVX2, FMA, F16C), from /proc/cpuinfo."""
    line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    return {"avx2", "fma", "f16c"} <= set(line.split(":", 1)[1].split())
