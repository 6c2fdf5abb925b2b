"""Memory bandwidth as the kernels see it, and the decode roofline it implies (issue 25).

``python -m bench.inference.bandwidth`` prints JSON: GB/s read by one core and by all of this
process's CPUs, with numpy's and torch's sum beside them.

A decode step reads every weight byte once with wide loads on every core, so the rate that bounds
it is a streaming read done the same way: ``native_probe/stream_read.c`` (AVX-512 or AVX2 loads into
independent accumulators, one pinned thread per CPU, buffer far larger than L3, best of several
runs). The earlier probe (``bench/inference/__main__.py``: ``memory_bandwidth_gbs``) timed
``torch.ones(128M).sum()``: an fp32 reduction, which on these VMs runs at roughly half of what the
memory delivers (see :func:`measure` and docs/inference.md), so its "roofline" sat below the decode
rate Reprise actually reaches.

The probe is compiled with the system C compiler on first use into ``.cache/native_probe/``
(git-ignored), named by a digest of source and flags, like ``inference_svc/runtime/native``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import results_io
from inference_svc.runtime.native.library import NativeUnavailable, compile_once

SOURCE = Path(__file__).with_name("native_probe") / "stream_read.c"
FLAGS = ("-O2", "-shared", "-fPIC", "-pthread", "-Wall")
BUILD_DIR = Path(__file__).resolve().parents[2] / ".cache" / "native_probe"
#: Default buffer: 8x the 32 MiB L3 of the Zen 4 VMs here, so a sweep finds nothing of itself in cache;
#: no larger, so that among many short runs (~10 ms each) some escape the other processes sharing the cores.
DEFAULT_MB = 256
DEFAULT_RUNS = 15
#: Vector paths of the probe (``simd`` argument).
SIMD = {-1: "best", 0: "scalar", 1: "avx2", 2: "avx512"}
#: How far ahead ``int4_avx512bf16.c`` prefetches into L2 (32 groups x 1,280 bytes).
KERNEL_AHEAD = 32 * 1280


class ProbeUnavailable(RuntimeError):
    """The probe cannot be built or run here; the message says why."""


def build(directory: Path = BUILD_DIR) -> Path:
    """Compile the probe once per source/flags version into ``directory``; return the library's path."""
    try:
        return compile_once("stream_read", (SOURCE,), (), FLAGS, (), directory, timeout=120)
    except NativeUnavailable as exc:
        raise ProbeUnavailable(str(exc)) from exc


@functools.cache
def _library(directory: Path = BUILD_DIR) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build(directory)))
    lib.reprise_probe_read_gbps.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int, ctypes.c_size_t]
    lib.reprise_probe_read_gbps.restype = ctypes.c_double
    lib.reprise_probe_simd.argtypes = [ctypes.c_int]
    lib.reprise_probe_simd.restype = ctypes.c_int
    return lib


def cpus() -> list[int]:
    """The CPUs this process may run on (a taskset or cgroup narrows them), in order."""
    return sorted(os.sched_getaffinity(0))


def read_gbps(threads: int = 1, mb: float = DEFAULT_MB, runs: int = DEFAULT_RUNS, simd: int = -1, ahead: int = 0,
              directory: Path = BUILD_DIR) -> float:
    """Best streaming-read rate in GB/s (1e9 bytes/s) with ``threads`` threads, each pinned to one of :func:`cpus`.

    ``mb`` MiB are split between the threads (each touches its slice first, untimed); ``simd`` picks the
    vector path (-1: the widest this CPU has; see :data:`SIMD`); ``ahead`` > 0 also prefetches into L2 that
    many bytes ahead of the loads, as the int4 kernel does (:data:`KERNEL_AHEAD`).
    """
    mine = cpus()
    if not 1 <= threads <= len(mine):
        raise ValueError(f"threads must be 1..{len(mine)} (the CPUs this process may use), not {threads}")
    if mb <= 0 or runs < 1:
        raise ValueError(f"need a positive buffer and at least one run (mb={mb}, runs={runs})")
    pinned = (ctypes.c_int * threads)(*mine[:threads])
    gbps = _library(directory).reprise_probe_read_gbps(int(mb * 2**20), threads, pinned, runs, simd, ahead)
    if not gbps > 0:
        raise ProbeUnavailable(f"the probe failed (code {gbps:.0f}: -1 bad size, -2 no memory, -4 no threads)")
    return gbps


def simd_name(simd: int = -1, directory: Path = BUILD_DIR) -> str:
    """The vector path the probe takes here for ``simd`` (-1: the widest this CPU has)."""
    return SIMD[_library(directory).reprise_probe_simd(simd)]


def roofline_tok_s(weight_bytes_per_token: float, gbps: float) -> float:
    """Decode tokens/s if every token had to read ``weight_bytes_per_token`` bytes at ``gbps`` GB/s and nothing else.

    An upper bound for a memory-bound decode step of one sequence; a batch of B sequences reads the
    weights once per step, so its bound is B times this (until compute binds).
    """
    if not weight_bytes_per_token > 0 or not gbps > 0 or math.isinf(weight_bytes_per_token) or math.isinf(gbps):
        raise ValueError(f"need positive finite bytes per token and GB/s (got {weight_bytes_per_token}, {gbps})")
    return gbps * 1e9 / weight_bytes_per_token


def numpy_sum_gbps(mb: float = DEFAULT_MB, runs: int = DEFAULT_RUNS) -> float:
    """Best rate of ``numpy.sum`` over an fp32 array: one thread, pairwise summation (a reduction, not a read)."""
    import numpy as np

    a = np.ones(int(mb * 2**20) // 4, dtype=np.float32)
    return _best(lambda: a.sum(), a.nbytes, runs)


def torch_sum_gbps(threads: int, mb: float = DEFAULT_MB, runs: int = DEFAULT_RUNS) -> dict[str, float]:
    """What the old probe timed (``torch.ones(n).sum()``, fp32) at ``threads`` intra-op threads, best and median.

    The old probe reported the median of 7; the best is given too so the gap is not just noise.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.ones(int(mb * 2**20) // 4)
        times = _times(lambda: a.sum(), runs)
        return {"best": a.numel() * 4 / min(times) / 1e9, "median": a.numel() * 4 / statistics.median(times) / 1e9}
    finally:
        torch.set_num_threads(before)


#: The default model's (Qwen2.5-0.5B) int4 matrices of one decode step, (out, in): per layer the fused
#: qkv, o, fused gate/up and down projections, then the LM head's int4 copy. 308.7 MB in the kernel's layout.
QWEN_05B_STEP = ((1152, 896), (896, 896), (9728, 896), (896, 4864)) * 24 + ((151936, 896),)


def int4_bytes(shapes: tuple[tuple[int, int], ...] = QWEN_05B_STEP) -> int:
    """Bytes of ``shapes`` in the int4 kernel's layout: 320 bytes per 16 rows x 32 inputs (nibbles, bf16 scales and zeros)."""
    return sum(n * k // 512 * 320 for n, k in shapes)


def int4_kernel_gbps(shapes: tuple[tuple[int, int], ...] = QWEN_05B_STEP, runs: int = DEFAULT_RUNS,
                     directory: Path = BUILD_DIR) -> dict[str, float]:
    """Reprise's int4 kernel (``inference_svc/runtime/native``) on one row through ``shapes``: bytes read / time.

    The bytes a decode step streams, without attention, norms or Python between layers: what the
    serving kernel reads per second when memory is the limit. Weights are random nibbles with unit
    scales (no NaN or denormal paths). Raises :class:`ProbeUnavailable` without AVX512-BF16 or a compiler.
    """
    import torch

    from inference_svc.runtime.native import int4_gemv

    kernel, why = int4_gemv.load(directory / "int4")
    if kernel is None:
        raise ProbeUnavailable(why)
    g = torch.Generator().manual_seed(0)
    mats = []
    for n, k in shapes:
        packed = torch.randint(0, 256, (n // int4_gemv.SUPER_ROWS, k // int4_gemv.GROUP, 4, 320), dtype=torch.uint8, generator=g)
        packed[..., 256:].view(torch.int16).fill_(0x3F80)  # bf16 1.0: the scales and zeros
        mats.append((torch.randn(1, k, generator=g).to(torch.bfloat16), packed, n))
    nbytes = sum(p.numel() for _, p, _ in mats)

    def step() -> None:
        for x, packed, n in mats:
            kernel(x, packed, n)

    times = _times(step, runs)
    return {"best": nbytes / min(times) / 1e9, "median": nbytes / statistics.median(times) / 1e9,
            "mb_per_step": nbytes / 1e6, "threads": torch.get_num_threads()}


def _times(fn: Any, runs: int) -> list[float]:
    fn()  # warm: page faults and first-call setup are not the rate
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _best(fn: Any, nbytes: int, runs: int) -> float:
    return nbytes / min(_times(fn, runs)) / 1e9


def cpu_kind() -> str:
    """A file-name slug for the kind of CPU (one definition: bench/results_io.py)."""
    return results_io.cpu_kind()


def cpu_name() -> str:
    """The CPU's brand string with family and model (one definition: bench/results_io.py)."""
    return results_io.cpu_name()


def measure(mb: float = DEFAULT_MB, runs: int = DEFAULT_RUNS, compare: bool = True) -> dict[str, Any]:
    """The probe on one CPU and on all of them; with ``compare``, numpy's and torch's sums on the same buffer size."""
    n = len(cpus())
    out: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_kind": cpu_kind(), "cpus": n, "buffer_mib": mb, "runs": runs, "simd": simd_name(),
        "read_gbps": {"1": read_gbps(1, mb, runs), "all": read_gbps(n, mb, runs)},
        "loadavg": os.getloadavg()[0],
    }
    if n > 1:
        out["read_gbps"][str(n)] = out["read_gbps"]["all"]
    if compare:
        out["avx2_gbps_all"] = read_gbps(n, mb, runs, simd=1)
        out["numpy_sum_gbps_1"] = numpy_sum_gbps(mb, runs)
        out["torch_sum_gbps"] = {"1": torch_sum_gbps(1, mb, runs), str(n): torch_sum_gbps(n, mb, runs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=DEFAULT_MB, help="buffer size in MiB (far above L3)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per measurement; the best is reported")
    parser.add_argument("--no-compare", action="store_true", help="skip numpy's and torch's sums")
    args = parser.parse_args()
    print(json.dumps(measure(args.mb, args.runs, not args.no_compare), indent=2))


if __name__ == "__main__":
    main()
