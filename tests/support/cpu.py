"""What the CPU running the tests has, read independently of the code under test."""

from __future__ import annotations

from pathlib import Path


def _flags() -> set[str]:
    line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def cpu_has_avx2() -> bool:
    """The AVX2 kernel's requirements (AVX2, FMA, F16C), from /proc/cpuinfo."""
    return {"avx2", "fma", "f16c"} <= _flags()


def cpu_has_avx512vnni() -> bool:
    """The int8 kernel's several-row AVX512-VNNI path (AVX512F, AVX512BW, AVX512-VNNI), from /proc/cpuinfo."""
    return cpu_has_avx2() and {"avx512f", "avx512bw", "avx512_vnni"} <= _flags()


def int8_kernel_name() -> str:
    """ModelInfo's ``int4_kernel`` where int4 serves under fp32 with int8 activations on this CPU."""
    return "reprise-avx2-int8" + ("-vnni" if cpu_has_avx512vnni() else "")
