"""CPU placement: pin the process to chosen CPUs and size torch's thread pools from the result.

torch defaults to one intra-op thread per *online* CPU, which on a pinned
container oversubscribes the cores it may use (every matmul then waits on a
thread that cannot run). The thread count comes from the affinity mask,
never ``os.cpu_count()``. Inter-op parallelism is 1: the model worker runs one
graph at a time and a second pool would only compete for the same cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Placement:
    cpus: tuple[int, ...]
    threads: int
    interop_threads: int
    #: NUMA nodes the process may allocate memory on (from /proc/self/status), when known.
    mems: str = ""

    def describe(self) -> str:
        mems = f", memory nodes {self.mems}" if self.mems else ""
        return f"cpus {format_cpus(self.cpus)}, {self.threads} torch threads, {self.interop_threads} inter-op{mems}"


def parse_cpus(spec: str) -> tuple[int, ...]:
    """``"0-3,6"`` -> ``(0, 1, 2, 3, 6)``. Raises ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--cpus: {part!r} is not a CPU number or range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"--cpus: {part!r} is not a valid range")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("--cpus: no CPUs given")
    return tuple(sorted(cpus))


def format_cpus(cpus: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _mems_allowed() -> str:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Mems_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def apply(cpus: str | None) -> Placement:
    """Pin to ``cpus`` (None or empty: keep the inherited mask), then size torch's pools. Call once, early."""
    import torch

    if cpus:
        wanted = set(parse_cpus(cpus))
        allowed = os.sched_getaffinity(0)
        if not wanted <= allowed:
            raise ValueError(f"--cpus {cpus}: CPUs {sorted(wanted - allowed)} are not available to this process")
        os.sched_setaffinity(0, wanted)
    mask = tuple(sorted(os.sched_getaffinity(0)))
    torch.set_num_threads(len(mask))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already ran (tests, embedded use)
        pass
    return Placement(mask, torch.get_num_threads(), torch.get_num_interop_threads(), _mems_allowed())


def current() -> Placement:
    """The placement in force now (for ModelInfo), without changing it."""
    import torch

    return Placement(tuple(sorted(os.sched_getaffinity(0))), torch.get_num_threads(), torch.get_num_interop_threads(), _mems_allowed())
