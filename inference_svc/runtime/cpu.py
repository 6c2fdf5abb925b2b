"""What ``/proc/cpuinfo`` says about this CPU, read once per process.

The serving format (:mod:`.precision`) and the int4 kernel's paths (:mod:`.native.int4_gemv`) are decided
from these facts; every core of a machine reports the same ones, so the first processor's block is read.
"""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines (``vendor_id``, ``cpu family``, ``flags``...); empty when unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in first.splitlines()) if sep}


def flags() -> frozenset[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16``, ...)."""
    return frozenset(fields().get("flags", "").split())
