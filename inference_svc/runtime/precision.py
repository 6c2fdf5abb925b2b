"""Choosing the compute dtype and weight format (``--dtype``, ``--weights``).

The format decides the answers' last bits, and the cache keys on it (it is part
of the model's revision), so ``auto`` decides it from facts about the CPU and the
image only, never from a timing at start (which five starts on a busy machine
answered three ways):

- **AMX** (Sapphire/Emerald Rapids): bf16 with int4 weights; prompts run through
  AMX tiles on the dense bf16 copy, which int8 activations cannot match there
  (prefill 512 tokens: 702 vs 421 tok/s on an Emerald Rapids).
- **otherwise**, where Reprise's AVX2 int4 kernel builds and runs: fp32 with int4
  weights and int8 activations (integer products, AVX512-VNNI where the CPU has
  it). On an AMD Zen 4, which also multiplies bf16 natively (AVX512-BF16), this
  beats bf16 everywhere but one stream's decode: prefill 1.4-1.6x, one classify
  0.6x the time, eight streams decoded together 1.7x (VNNI's 64 multiply-adds per
  instruction against VDPBF16PS's 32), 45% of the memory; one stream decodes as
  fast (docs/inference.md, "Weight formats").
- where that kernel does not serve: bf16 with int4 weights if the CPU multiplies
  bf16 natively (AVX512-BF16), else fp16 weights through fbgemm (see ``weights.py``).

:func:`decide` is that rule as a pure function.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from inference_svc.runtime import cpu
from inference_svc.runtime.weights import WeightFormat, fbgemm_available

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    weights: WeightFormat
    reason: str


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu.flags())


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles for bf16 (``amx_bf16`` in ``/proc/cpuinfo``)."""
    return "amx_bf16" in cpu.flags()


def race(a: Callable[[], object], b: Callable[[], object], repeat: int = 15) -> tuple[float, float]:
    """Best-of-``repeat`` times of ``a`` and ``b``, measured alternately.

    For comparing kernels by hand or in the benchmark (``loader.race_int4_kernels``); no start
    decides anything by a timing (see the module doc).
    Alternating matters on a busy machine: with two intra-op threads on two
    cores, one descheduled thread stalls a whole matmul for a scheduler tick,
    and timing one candidate entirely before the other let a burst of other
    work decide the choice (seen: 7,966 us vs 365 us for a 64 us kernel).
    """
    a(), b()  # warm up: first calls pack weights and JIT kernels
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, fn in enumerate((a, b)):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


#: Says whether int4 weights can serve fp32 activations here, and why or why not: Reprise's AVX2 kernel
#: builds and runs (see ``loader.fp32_int4``). A fact about the CPU and the image, not a timing.
Int4Probe = Callable[[], tuple[bool, str]]

_INT4_FP32 = (
    "int4 weights through Reprise's AVX2 kernel (with int8 activations for every row; with fp32 ones for 1-31 rows, an "
    "fp16 copy through fbgemm for more)"
)


def _fp32(fmt: WeightFormat | None, why: str, int4: Int4Probe | None = None) -> Precision:
    """fp32 activations: int4 (AVX2 kernel) or fp16 weights through fbgemm, unless dense is asked for or fbgemm
    is missing. ``fmt`` None: the best that serves here."""
    if fmt is WeightFormat.INT8:
        raise ValueError(
            "--weights int8 needs --dtype bf16 on a CPU with AVX512-BF16 or AMX (torch's int8 kernel is slow with "
            "fp32 inputs); under fp32 use --weights int4, fp16 or dense"
        )
    if fmt is WeightFormat.DENSE:
        return Precision(torch.float32, WeightFormat.DENSE, why)
    if fmt in (None, WeightFormat.INT4) and fbgemm_available() and (int4 is not None or fmt is WeightFormat.INT4):
        usable, detail = int4() if int4 is not None else (False, "not checked (no probe given)")
        if usable:
            return Precision(torch.float32, WeightFormat.INT4, f"{why}; {_INT4_FP32} ({detail})")
        if fmt is WeightFormat.INT4:
            raise ValueError(f"--weights int4 under fp32 needs Reprise's AVX2 int4 kernel: {detail}")
        why = f"{why}; int4 not served ({detail})"
    elif fmt is WeightFormat.INT4:
        raise ValueError("--weights int4 under fp32 needs fbgemm for its prefill copy, which this torch build lacks")
    if fbgemm_available():
        return Precision(torch.float32, WeightFormat.FP16, f"{why}; fp16 weights through fbgemm")
    if fmt is WeightFormat.FP16:
        raise ValueError("--weights fp16 needs fbgemm, which this torch build lacks; use --weights dense")
    return Precision(torch.float32, WeightFormat.DENSE, f"{why}; no fbgemm in this torch build")


@dataclass(frozen=True)
class CpuFacts:
    """What :func:`decide` reads about the machine: the same at every start on it."""

    #: AVX512-BF16 or AMX in ``/proc/cpuinfo``.
    native_bf16: bool
    #: Reprise's AVX2 int4 kernel builds and runs here (``loader.fp32_int4``), and why or why not.
    int4_fp32: tuple[bool, str] = (False, "not checked")
    #: AMX tiles for bf16 (``amx_bf16``): bf16 prompts beat int8 activations only there.
    amx: bool = False


def choose(dtype: str, weights: str, int4: Int4Probe | None = None) -> Precision:
    """Resolve ``--dtype auto|bf16|fp32`` and ``--weights auto|int4|int8|fp16|dense`` on this CPU.

    ``--weights auto`` means int4 under bf16, and when ``--dtype auto``
    resolves to fp32, int4 where ``int4`` (the AVX2 kernel's probe) says it
    serves, else fp16 (fbgemm). An explicit ``--dtype fp32`` keeps the dense
    fp32 reference unless ``--weights int4`` or ``fp16`` is asked for. fp16
    weights exist only with fp32 activations, int8 only with bf16.
    """
    native_bf16 = cpu_supports_bf16()
    chosen = _resolve(dtype, weights, int4, native_bf16, native_bf16 and cpu_has_amx())
    if chosen.dtype == torch.bfloat16 and not native_bf16:  # served, as asked, but say what it costs
        log.warning(
            "--dtype bf16 on a CPU without AVX512-BF16/AMX: torch emulates bf16 here (a 64-row matmul ~3x "
            "slower than fp32); --dtype auto serves int4 with int8 activations on such CPUs (for the image: "
            "the default MODEL_DTYPE=auto)"
        )
    return chosen


def decide(dtype: str, weights: str, facts: CpuFacts) -> Precision:
    """:func:`choose` as a pure function of the CPU's facts: the same facts, the same format, every time."""
    return _resolve(dtype, weights, lambda: facts.int4_fp32, facts.native_bf16, facts.amx)


def _resolve(dtype: str, weights: str, int4: Int4Probe | None, native_bf16: bool, amx: bool = False) -> Precision:
    """:func:`choose` with the CPU's answers given: whether it has native bf16, and AMX."""
    fmt = None if weights == "auto" else WeightFormat(weights)
    if dtype == "fp32":
        return _fp32(fmt or WeightFormat.DENSE, "fp32 requested", int4)
    if dtype == "bf16":
        if fmt is WeightFormat.FP16:
            raise ValueError("--weights fp16 runs with fp32 activations: use --dtype fp32 or auto")
        reason = "bf16 requested" if native_bf16 else "bf16 requested; this CPU emulates it (slow)"
        return Precision(torch.bfloat16, fmt or WeightFormat.INT4, reason)
    if dtype != "auto":
        raise ValueError(f"--dtype {dtype!r}: expected auto, bf16 or fp32")
    if fmt is WeightFormat.FP16:
        return _fp32(fmt, "auto: --weights fp16 runs with fp32 activations")
    if not native_bf16:
        return _fp32(fmt, "auto: no AVX512-BF16/AMX on this CPU", int4)
    if amx:
        return Precision(torch.bfloat16, fmt or WeightFormat.INT4, "auto: AMX multiplies bf16 prompts in tiles")
    if fmt in (None, WeightFormat.INT4) and int4 is not None:
        usable, detail = int4()
        if usable:
            return _fp32(WeightFormat.INT4, "auto: AVX512-BF16 without AMX: int8 activations (integer products) beat bf16 here",
                         lambda: (usable, detail))
        return Precision(torch.bfloat16, fmt or WeightFormat.INT4,
                         f"auto: the CPU multiplies bf16 natively (AVX512-BF16); int8 activations not served ({detail})")
    return Precision(torch.bfloat16, fmt or WeightFormat.INT4, "auto: the CPU multiplies bf16 natively (AVX512-BF16)")


def anywhere(dtype: str, weights: str, activations_choice: str = "auto") -> list[tuple[Precision, str]]:
    """Every (precision, activations) these flags can resolve to on some CPU, in a fixed order.

    What an image built on one machine and run on others needs converted (``prepare --all-formats``):
    :func:`decide` is asked with each answer a CPU can give (native bf16 or not, AMX or not, the int4
    kernel serving or not); answers that refuse the flags are skipped. The torch build (fbgemm) is the one
    this process runs, as in the image.
    """
    found: dict[tuple[torch.dtype, WeightFormat, str], tuple[Precision, str]] = {}
    for native_bf16, amx, int4_serves in itertools.product((True, False), repeat=3):
        if amx and not native_bf16:
            continue
        try:
            chosen = decide(dtype, weights, CpuFacts(native_bf16, (int4_serves, "assumed"), amx))
            acts = activations(activations_choice, chosen)
        except ValueError:
            continue
        found.setdefault((chosen.dtype, chosen.weights, acts), (chosen, acts))
    return list(found.values())


#: ``--activations`` values: int8 activations serve int4 weights under fp32 (see ``native.int4_gemv.Int4KernelF32``).
ACTIVATION_CHOICES = ("auto", "int8", "fp32")


def check_activations(choice: str) -> None:
    """Refuse an ``--activations`` value outside :data:`ACTIVATION_CHOICES` (callable before anything is loaded)."""
    if choice not in ACTIVATION_CHOICES:
        raise ValueError(f"--activations {choice!r}: expected one of {ACTIVATION_CHOICES}")


def activations(choice: str, chosen: Precision) -> str:
    """Resolve ``--activations auto|int8|fp32`` for the chosen precision: "int8" or "fp32".

    They apply to int4 weights under fp32 (CPUs without bf16), where "auto" means int8: each row
    quantized per 32 inputs, integer products for every row count (1.5-1.7x fbgemm's fp16 GEMM for
    prefill on an AMD Zen 3, no fp16 copy in memory). Elsewhere activations are the compute dtype's.
    """
    check_activations(choice)
    serves = chosen.dtype == torch.float32 and chosen.weights is WeightFormat.INT4
    if choice == "int8" and not serves:
        raise ValueError(
            f"--activations int8 applies to int4 weights under fp32 (CPUs without bf16); this start serves "
            f"{chosen.weights.value} weights with {'bf16' if chosen.dtype == torch.bfloat16 else 'fp32'} activations"
        )
    return "int8" if serves and choice != "fp32" else "fp32"
