"""Reprise's own int4 kernels (``int4_gemv.c``) and fused decode-step operations (``decode_ops.c``),
compiled with the system C compiler on first use.

Two kernels share the library: :class:`Int4Kernel` (bf16 activations, AVX512-BF16 and AMX; below) and
:class:`Int4KernelF32` (fp32 activations on AVX2, for CPUs without bf16: decode rows and short
prefill chunks of the ``int4`` format under fp32, see ``weights.py``). :class:`DecodeOps` (end of
this module) runs the small operations of a one-token step on any x86-64 CPU, in any weight format.

torch's ``_weight_int4pack_mm_for_cpu`` converts every nibble to fp32 and
multiplies it alone; on 2-core Xeon and Zen 4 VMs that, not memory, bounds
decode (0.32-0.45 of the bandwidth roofline). ``int4_gemv.c`` multiplies 32
weights per AVX512-BF16 instruction (see the file's header). It serves the
rows a decode step multiplies (fewer than ``DENSE_MIN_ROWS``) for int4 layers
and the LM head's int4 shortlist copy, on CPUs with AVX512-BF16 (where int4
serves with bf16 activations). On AMX it also takes 2 to
``AMX_MAX_ROWS - 1`` rows (and every row of int4 layers without a dense
copy), converting each weight tile once for up to 64 rows.

The shared library is built once per source version into a directory the
caller names (the model cache: ``<model-cache>/native``) and loaded with
ctypes, which releases the GIL during the call. It is linked with
``-fopenmp`` and loaded after torch, so its ``libgomp.so.1`` is the one torch
already loaded: its threads are torch's threads. Without a compiler, or on a
CPU without AVX512-BF16, :func:`load` says why and the caller keeps torch's
kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch

#: The kernel's name where it serves (ModelInfo's ``int4_kernel``; otherwise "torch").
NAME = "reprise-avx512bf16"
#: Compiled together into one library: the int4 kernels and the fused decode-step operations (:class:`DecodeOps`).
SOURCES = (Path(__file__).with_name("int4_gemv.c"), Path(__file__).with_name("decode_ops.c"))
#: Included by the sources: part of what a built library is digested from.
HEADERS = (Path(__file__).with_name("bf16.h"),)
# -fno-trapping-math and -fno-math-errno let decode_ops.c's loops vectorize (no reassociation: the same
# sums); -ffp-contract=off keeps a*b + c two roundings, as in torch (the kernels' FMAs are intrinsics).
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-Wall", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off")
LIBS = ("-lm",)  # after the source: linkers with --as-needed drop libraries named before it
#: Output rows per kernel work unit; a layer's output size must be a multiple.
SUPER_ROWS = 64
GROUP = 32
_BLOCK_BYTES = 320  # 16 rows x 32 inputs: 256 bytes of nibbles + 16 bf16 scales + 16 bf16 zeros
#: Rows from which a layer's dense bf16 copy beats the AMX path (on the Xeon: the four layer shapes
#: together 1.45x faster here at 16 rows, 1.2x at 22, 1.08x at 32, 0.83x at 48; see docs/inference.md).
AMX_MAX_ROWS = 32


K = TypeVar("K")


class NativeUnavailable(RuntimeError):
    """The kernel cannot be built or run here; the message says why."""


@functools.cache
def torch_int4_block() -> int:
    """Rows per block of torch's CPU int4 layout here: it depends on the CPU torch's kernel was built for.

    ``_convert_weight_to_int4pack_for_cpu`` writes ``[N/B, K, B/2]`` bytes, row ``j`` of a block in the
    low nibbles and row ``B/2 + j`` in the high ones, with B = 64 on AVX512 CPUs and 32 on AVX2 ones
    (seen on an AMD Zen 3). Found once per process by packing a probe.
    """
    n, k = 128, 64
    q = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1).view(torch.uint8).reshape(n, k // 2)
    for block in (64, 32):
        if torch.equal(torch_int4_layout(q, block), packed):
            return block
    raise NativeUnavailable("torch's int4 weight layout on this CPU is not one Reprise's kernel reads")


def torch_int4_layout(q: torch.Tensor, block: int) -> torch.Tensor:
    """``q`` ([N, K] values 0..15) in torch's CPU int4 layout with ``block`` rows per block, as ``[N, K/2]`` bytes.

    Whole blocks: for each input, byte ``j`` holds row ``j`` (low nibble) and row ``block/2 + j`` (high);
    a last block of ``N % block`` rows (a multiple of 16) pairs neighbouring rows instead (torch's
    ``weight_to_int4pack_kernel``).
    """
    n, k = q.shape
    whole = n - n % block
    t = q[:whole].reshape(whole // block, block, k).permute(0, 2, 1)
    parts = [(t[..., : block // 2] | (t[..., block // 2 :] << 4)).reshape(-1)]
    if whole < n:
        tail = q[whole:].t()  # [K, rows]
        parts.append((tail[:, 0::2] | (tail[:, 1::2] << 4)).reshape(-1))
    return torch.cat(parts).to(torch.uint8).reshape(n, k // 2)


def torch_int4_values(packed: torch.Tensor, block: int) -> torch.Tensor:
    """The ``[N, K]`` values (uint8, 0..15) of ``packed``, written in torch's int4 layout with ``block`` rows per block."""
    n, k = packed.shape[0], packed.shape[1] * 2
    whole = n - n % block
    flat = packed.view(torch.uint8).reshape(-1)
    cut = whole * k // 2
    p = flat[:cut].reshape(whole // block, k, block // 2)
    rows = [torch.cat([p & 0xF, p >> 4], dim=-1).permute(0, 2, 1).reshape(whole, k)]
    if whole < n:
        tail = flat[cut:].reshape(k, (n - whole) // 2)
        rows.append(torch.stack([tail & 0xF, tail >> 4], dim=-1).reshape(k, n - whole).t())
    return torch.cat(rows)


def relayout_torch_int4(packed: torch.Tensor, block: int) -> torch.Tensor:
    """``packed``, written where torch's int4 block was ``block`` (another CPU), in this CPU's layout.

    A converted copy made on an AVX2 machine holds 32-row blocks; torch on an AVX-512 one reads 64-row
    blocks, and would multiply the wrong nibbles without a word (an image is built on one machine and
    run on others). Done in bytes, with :func:`torch_int4_layout` (which the tests hold to torch's own
    packing): 1.5 s for the default model's 247 MB on a Zen 3, against 6 s through torch's int32 packer.
    """
    here = torch_int4_block()
    return packed if block == here else torch_int4_layout(torch_int4_values(packed, block), here)


class Int4Kernel:
    """The compiled kernel: :meth:`pack` re-lays torch's int4 weights out for it, ``__call__`` multiplies."""

    def __init__(self, library: Path, *, fast: bool | None = None) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._fn = self._lib.reprise_int4_gemv
        self._fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 5
        self._fn.restype = ctypes.c_int
        self._amx_fn = self._lib.reprise_int4_gemm_amx
        self._amx_fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
        self._amx_fn.restype = ctypes.c_int
        self._pack = self._lib.reprise_int4_pack
        self._pack.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
        self._pack.restype = None
        self.cpu_supported = bool(self._lib.reprise_int4_avx512bf16_supported())
        #: True: the AVX512-BF16 kernel; False: the plain C reference (same layout; tests only, it is slow).
        self.fast = self.cpu_supported if fast is None else fast
        if self.fast and not self.cpu_supported:
            raise NativeUnavailable("this CPU has no AVX512-BF16")
        #: Several rows at once on AMX tiles (the CPU has AMX-BF16 and Linux granted the tile state).
        self.amx = self.fast and bool(self._lib.reprise_int4_amx_supported())

    @staticmethod
    def supports(n: int, k: int, group: int) -> bool:
        return group == GROUP and n % SUPER_ROWS == 0 and k % GROUP == 0

    def pack(self, q4: torch.Tensor, sz4: torch.Tensor) -> torch.Tensor:
        """torch's CPU int4 layout (``_convert_weight_to_int4pack_for_cpu``, see :func:`torch_int4_block`) +
        its ``[K/32, N, 2]`` bf16 scale/zero tensor -> this kernel's ``[N/64, K/32, 4, 320]`` bytes (see
        ``int4_gemv.c``), in C.

        :meth:`pack_reference` does the same in torch, ~50x slower (3.1 vs 0.06 s for the LM head).
        """
        n, k = self._check(q4, sz4)
        q4, sz4 = q4.contiguous(), sz4.contiguous()
        out = torch.empty(n // SUPER_ROWS, k // GROUP, 4, _BLOCK_BYTES, dtype=torch.uint8)
        self._pack(q4.data_ptr(), sz4.data_ptr(), out.data_ptr(), n, k, torch.get_num_threads(), torch_int4_block())
        return out

    @staticmethod
    def _check(q4: torch.Tensor, sz4: torch.Tensor) -> tuple[int, int]:
        n, k = q4.shape[0], q4.shape[1] * 2
        if q4.dtype != torch.uint8 or not Int4Kernel.supports(n, k, k // sz4.shape[0]) or sz4.dtype != torch.bfloat16:
            raise ValueError(f"cannot pack an int4 weight of {n}x{k} with scales {tuple(sz4.shape)} {sz4.dtype}")
        return n, k

    @staticmethod
    def pack_reference(q4: torch.Tensor, sz4: torch.Tensor) -> torch.Tensor:
        """:meth:`pack` in torch operations.

        torch's layout: ``[N/B, K, B/2]`` bytes, byte ``j`` of ``(t, k)`` holding row ``Bt + j`` in its
        low nibble and row ``Bt + B/2 + j`` in its high nibble (``B``: :func:`torch_int4_block`).
        """
        n, k = Int4Kernel._check(q4, sz4)
        s, g, block = n // SUPER_ROWS, k // GROUP, torch_int4_block()
        t = q4.view(torch.uint8).reshape(n // block, k, block // 2).to(torch.int32)
        q = torch.cat([t & 15, t >> 4], dim=2).permute(0, 2, 1).reshape(s, SUPER_ROWS, k)  # [s, 64 rows, k]
        # rows -> (block b, row r); inputs -> (group g, pair j*4+i, half h)
        q = q.reshape(s, 4, 16, g, 4, 4, 2)  # s b r g j i h
        shifts = torch.tensor([0, 4, 8, 12], dtype=torch.int32).view(1, 1, 1, 1, 1, 4, 1)
        words = (q << shifts).sum(dim=5)  # s b r g j h: 4 nibbles per 16-bit word
        words = words.permute(0, 3, 1, 4, 2, 5).reshape(s, g, 4, 128)  # s g b (j r h)
        nibbles = torch.stack([words & 0xFF, words >> 8], dim=-1).to(torch.uint8)  # little-endian words
        sz = sz4.reshape(g, s, 4, 16, 2).permute(1, 0, 2, 4, 3).contiguous()  # s g b (scale|zero) 16
        scales = sz.view(torch.uint8).reshape(s, g, 4, 64)
        return torch.cat([nibbles.reshape(s, g, 4, 256), scales], dim=3).contiguous()

    def __call__(self, x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
        """``x`` ``[rows, K]`` bf16 -> ``[rows, n]`` bf16."""
        x = x.contiguous()
        m, k = x.shape
        if x.dtype != torch.bfloat16 or packed.shape != (n // SUPER_ROWS, k // GROUP, 4, _BLOCK_BYTES):
            raise ValueError(f"int4 kernel: input {tuple(x.shape)} {x.dtype} does not fit weights {tuple(packed.shape)}")
        y = torch.empty(m, n, dtype=torch.bfloat16)
        threads = torch.get_num_threads()
        if m > 1 and self.amx:
            failed = self._amx_fn(packed.data_ptr(), x.data_ptr(), y.data_ptr(), m, n, k, threads)
        else:
            failed = self._fn(packed.data_ptr(), x.data_ptr(), y.data_ptr(), m, n, k, threads, int(self.fast))
        if failed:
            raise MemoryError("int4 kernel: no memory for its buffers")
        return y


def build(directory: Path) -> Path:
    """Compile ``SOURCES`` into ``directory`` once per source and flags; returns the library's path."""
    compiler = os.environ.get("CC", "cc")
    sources = b"".join(source.read_bytes() for source in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(sources + " ".join((compiler, *FLAGS, *LIBS)).encode()).hexdigest()[:12]
    target = directory / f"int4_gemv-{digest}.so"
    if target.exists():
        return target  # e.g. built into the image's model cache, where the runtime has no compiler
    if shutil.which(compiler) is None:
        raise NativeUnavailable(f"no C compiler ({compiler!r} not found; install gcc)")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".int4_gemv-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), *LIBS, "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise NativeUnavailable(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: concurrent starts each build, one wins
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


#: The fp32-activation kernel's name where it serves (CPUs without bf16; see :class:`Int4KernelF32`).
F32_NAME = "reprise-avx2"
#: Output rows per fp32 kernel superblock; a layer's output size must be a multiple.
F32_ROWS = 32
_F32_BLOCK = 640  # 32 rows x 32 inputs: 512 bytes of nibbles + 32 fp16 scales + 32 fp16 zeros
#: Rows from which a layer's fp16 copy through fbgemm beats the AVX2 kernel (Zen 3, the four layer shapes of
#: the default model x 24 layers, against fbgemm's fp16: 1 row 3.0x faster, 2 rows 1.7-2.1x, 8 rows 1.4-1.6x,
#: 16 rows 1.2x, 24-32 rows 1.06x, 40-48 rows 0.98x).
F32_MAX_ROWS = 32
#: Rows from which the AVX2 kernel converts each group's weights once for all rows (mode 2) instead of the
#: one-row path (mode 1): at 2 rows 23-25 ms vs ~30 for the one-row path twice.
_F32_SHARED_ROWS = 2
_NO_AVX2 = "this CPU has no AVX2/FMA/F16C"


#: Activations of the fp32-activation kernel: fp32 as given, or each row quantized to int8 per 32 inputs.
ACTIVATIONS = ("fp32", "int8")
#: Set in a one-call step's kernel argument (``decode_ops.c``): the int8-activation kernel, and its
#: AVX512-VNNI paths (mode 3 for several rows, 4 for one).
_STEP_INT8 = 0x10
_STEP_VNNI = 0x20
_NO_VNNI = "this CPU has no AVX512-VNNI"


class Int4KernelF32:
    """int4 weights against fp32 activations on AVX2 (``int4_gemv.c``, second half), for CPUs without bf16.

    The layout is written once at conversion (:meth:`pack`) and saved in the converted copy. A row's
    product depends only on whether its call has one row (mode 1) or more (mode 2, another summation
    order), never on the other rows.

    ``activations="int8"``: each input row is quantized to int8 per group of 32 inputs (a scale per group,
    like llama.cpp's Q8_0) and the products are integer (``reprise_int4_gemm_q8``): 1.5-1.7x fbgemm's fp16
    GEMM at 16-128 rows on an AMD Zen 3, so it serves every row count and no fp16 prefill copy is kept.
    Its one-row and several-row paths give the same bits, so a row's product depends on nothing else.
    """

    def __init__(self, library: Path, *, mode: int | None = None, activations: str = "fp32") -> None:
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations {activations!r}: expected one of {ACTIVATIONS}")
        self._lib = ctypes.CDLL(str(library))
        self.activations = activations
        self._fn = self._lib.reprise_int4_gemm_q8 if activations == "int8" else self._lib.reprise_int4_gemm_f32
        self._fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 5
        self._fn.restype = ctypes.c_int
        self.cpu_supported = bool(self._lib.reprise_int4_avx2_supported())
        #: int8 activations take the AVX512-VNNI paths (VPDPBUSD: the same bits as AVX2's; on a 2-core Xeon
        #: prefill ~2x, decode 1.06x; see docs/inference.md).
        self.vnni = activations == "int8" and self.cpu_supported and bool(self._lib.reprise_int4_vnni_supported())
        #: None: by the number of rows (see ``_F32_SHARED_ROWS``), AVX512-VNNI for int8 rows where the CPU has
        #: it; 0: the plain C reference of mode 1 (same bits; tests only, slow); 1 / 2: force one AVX2 path;
        #: 3 / 4: the AVX512-VNNI several-row / one-row path (int8 activations only; tests).
        self.mode = mode
        if mode in (3, 4) and not self.vnni:
            raise NativeUnavailable(_NO_VNNI if activations == "int8" else f"mode {mode} is for int8 activations")
        if mode not in (None, 0) and not self.cpu_supported:
            raise NativeUnavailable(_NO_AVX2)

    @property
    def name(self) -> str:
        """ModelInfo's ``int4_kernel``: ``F32_NAME``, with "-int8" for int8 activations and "-vnni" where
        they take the AVX512-VNNI paths."""
        return F32_NAME + ("-int8" if self.activations == "int8" else "") + ("-vnni" if self._rows_mode == 3 else "")

    @property
    def _rows_mode(self) -> int:
        """The path of a call with several rows."""
        return self.mode if self.mode is not None else 3 if self.vnni else 2

    @property
    def _row_mode(self) -> int:
        """The path of a call with one row."""
        return self.mode if self.mode is not None else 4 if self.vnni else 1

    @property
    def step_arg(self) -> int:
        """The kernel argument a one-call step passes for one row (``decode_ops.c``'s ``linear``)."""
        mode = self.mode if self.mode is not None else 1
        if self.activations != "int8":
            return mode
        return mode | _STEP_INT8 | (_STEP_VNNI if self._rows_mode == 3 else 0)

    @staticmethod
    def supports(n: int, k: int, group: int) -> bool:
        return group == GROUP and n % F32_ROWS == 0 and k % GROUP == 0

    @staticmethod
    def out_features(packed: torch.Tensor) -> int:
        return packed.shape[0] * F32_ROWS

    @staticmethod
    def pack(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """int4 values ``q`` ``[N, K]`` (0..15) and fp16 ``scale``/``zero`` ``[N, K/32]`` -> ``[N/32, K/32, 640]`` bytes.

        The layout is described at the top of the fp32 half of ``int4_gemv.c``. Runs at conversion time.
        """
        n, k = q.shape
        if not Int4KernelF32.supports(n, k, GROUP) or scale.shape != (n, k // GROUP) or scale.dtype != torch.float16:
            raise ValueError(f"cannot pack an int4 weight of {n}x{k} with scales {tuple(scale.shape)} {scale.dtype}")
        s, g = n // F32_ROWS, k // GROUP
        t = q.to(torch.uint8).reshape(s, 4, 8, g, 4, 8)  # s v l g c i
        t = t.permute(0, 3, 4, 1, 2, 5)  # s g c v l i
        nibbles = (t[..., 0::2] | (t[..., 1::2] << 4)).reshape(s, g, 512)  # little-endian dwords
        sz = torch.stack([scale, zero]).reshape(2, s, F32_ROWS, g).permute(1, 3, 0, 2).contiguous()  # s g 2 32
        return torch.cat([nibbles, sz.view(torch.uint8).reshape(s, g, 128)], dim=2).contiguous()

    def __call__(self, x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
        """``x`` ``[rows, K]`` fp32 -> ``[rows, n]`` fp32."""
        x = x.contiguous()
        m, k = x.shape
        if x.dtype != torch.float32 or packed.shape != (n // F32_ROWS, k // GROUP, _F32_BLOCK):
            raise ValueError(f"int4 kernel: input {tuple(x.shape)} {x.dtype} does not fit weights {tuple(packed.shape)}")
        y = torch.empty(m, n, dtype=torch.float32)
        mode = self._row_mode if m < _F32_SHARED_ROWS else self._rows_mode
        if mode and not self.cpu_supported:
            raise NativeUnavailable(_NO_AVX2)
        if self._fn(packed.data_ptr(), x.data_ptr(), y.data_ptr(), m, n, k, torch.get_num_threads(), mode):
            raise MemoryError("int4 kernel: no memory for its buffers")
        return y


def _load(kind: Callable[[Path], K], directory: Path, runs_here: Callable[[K], bool], why_not: str) -> tuple[K | None, str]:
    """``kind`` over the library built in ``directory``, or ``(None, why not)``: no compiler, a failed build,
    or (``runs_here`` false) not this CPU."""
    try:
        kernel = kind(build(directory))
    except (NativeUnavailable, OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    return (kernel, "") if runs_here(kernel) else (None, why_not)


@functools.cache
def load(directory: Path) -> tuple[Int4Kernel | None, str]:
    """The serving kernel, or ``(None, why not)``: no compiler, a failed build, or no AVX512-BF16."""
    return _load(Int4Kernel, directory, lambda k: k.fast, "this CPU has no AVX512-BF16")


@functools.cache
def load_fp32(directory: Path, activations: str = "fp32") -> tuple[Int4KernelF32 | None, str]:
    """The fp32-activation kernel (``activations``: "fp32" or "int8"), or ``(None, why not)``: no compiler, a
    failed build, or no AVX2/FMA/F16C."""
    kind = functools.partial(Int4KernelF32, activations=activations)
    return _load(kind, directory, lambda k: k.cpu_supported, _NO_AVX2)


#: ModelInfo's ``decode_ops`` where :class:`DecodeOps` serves (otherwise "torch").
DECODE_OPS_NAME = "reprise-c"
#: Head sizes the fused attention's stack buffers hold (``decode_ops.c``).
MAX_HEAD_DIM = 256
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class DecodeOps:
    """The small operations of a one-token decode step, fused in C (``decode_ops.c``): three calls per layer
    around its matmuls instead of ~35 torch operations. Any x86-64 CPU; fp32 or bf16 compute dtype."""

    def __init__(self, library: Path, *, simd: bool = True) -> None:
        #: False: the portable C paths even where the CPU has AVX2 (tests; the same results to rounding).
        self.simd = simd
        lib = ctypes.CDLL(str(library))
        p, i = ctypes.c_void_p, ctypes.c_int
        self._norm = lib.reprise_add_rmsnorm
        self._norm.argtypes = [p, p, i, p, p, i, i, ctypes.c_float]
        self._norm.restype = None
        self._attend = lib.reprise_decode_attention
        self._attend.argtypes = [p] * 5 + [i] * 5 + [i, p, p, i, i]
        self._attend.restype = i
        self._silu = lib.reprise_silu_mul
        self._silu.argtypes = [p, i, i, p, i]
        self._silu.restype = None
        self._step = lib.reprise_decode_step
        self._step.argtypes = [ctypes.POINTER(_Layer), i, p] + [i] * 5 + [ctypes.c_float] + [p] * 4 + [i] * 4 + [p, i, i]
        self._step.restype = i
        self._batch = lib.reprise_decode_batch
        self._batch.argtypes = [ctypes.POINTER(_Layer), i, p] + [i] * 5 + [ctypes.c_float] + [p] * 6 + [i] * 2 + [p, i, i]
        self._batch.restype = i
        self._batch_scratch = lib.reprise_decode_batch_scratch
        self._batch_scratch.argtypes = [i] * 5 + [p] + [i] * 2
        self._batch_scratch.restype = ctypes.c_size_t
        self._step_scratch = lib.reprise_decode_step_scratch
        self._step_scratch.argtypes = [i] * 7
        self._step_scratch.restype = ctypes.c_size_t
        self._attention_scratch = lib.reprise_decode_attention_scratch
        self._attention_scratch.argtypes = [i] * 3
        self._attention_scratch.restype = ctypes.c_size_t

    @staticmethod
    def supports(dtype: torch.dtype, head_dim: int) -> bool:
        return dtype in _DTYPES and head_dim <= MAX_HEAD_DIM and head_dim % 2 == 0

    def add_rmsnorm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """``x += delta`` (in place, when given), then RMSNorm(x) * weight in ``dtype``. ``x``, ``weight``: fp32, one row."""
        if not (x.is_contiguous() and weight.is_contiguous() and x.dtype == weight.dtype == torch.float32):
            raise ValueError("add_rmsnorm: the residual (updated in place) and the weight must be contiguous fp32")
        n = x.numel()
        delta = None if delta is None else delta.contiguous()
        out = torch.empty(1, n, dtype=dtype)
        dt = 0 if delta is None else _DTYPES[delta.dtype]
        self._norm(x.data_ptr(), None if delta is None else delta.data_ptr(), dt, weight.data_ptr(), out.data_ptr(),
                   _DTYPES[dtype], n, eps)
        return out

    def attention(
        self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int,
        heads: int, scores: torch.Tensor,
    ) -> torch.Tensor:
        """One new token's attention: ``qkv`` ``[1, (heads + 2 kv_heads) d]``; ``cos``/``sin`` the tables' row ``pos``;
        ``k``/``v`` one layer's caches ``[kv_heads, capacity, d]`` (row ``pos`` written here); ``scores`` fp32
        scratch of :meth:`scratch_size` floats. Returns ``[1, heads d]`` in the compute dtype."""
        kv_heads, cap, d = k.shape
        if not (k.is_contiguous() and v.is_contiguous() and k.dtype == v.dtype == qkv.dtype == cos.dtype):
            raise ValueError("decode attention: the caches must be contiguous and in the compute dtype")
        if scores.numel() < self.scratch_size(heads, d, pos) or pos >= cap:
            raise ValueError(f"decode attention: position {pos} does not fit the caches or the scratch")
        qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
        out = torch.empty(1, heads * d, dtype=qkv.dtype)
        self._attend(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), k.data_ptr(), v.data_ptr(), cap, pos, heads,
                     kv_heads, d, _DTYPES[qkv.dtype], out.data_ptr(), scores.data_ptr(), torch.get_num_threads(),
                     int(self.simd))
        return out

    def scratch_size(self, heads: int, head_dim: int, pos: int) -> int:
        """fp32 scratch :meth:`attention` needs at position ``pos``: scores, rotated queries, outputs."""
        return int(self._attention_scratch(heads, head_dim, pos))

    def step(
        self, plan: StepPlan, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, cos: torch.Tensor,
        sin: torch.Tensor, heads: int, eps: float,
    ) -> None:
        """Every layer of ``plan`` for the tokens at ``pos``.. (one row of the residual ``x`` each, fp32 ``[m, hidden]``,
        updated in place), K/V written at their positions of the caches ``[layers, kv_heads, capacity, d]``;
        ``cos``/``sin`` the tables' rows for those positions. Each row takes the same operations as a one-token step
        (rows in order; the matmuls take all rows at once): for one row, the same bits as calling
        :meth:`add_rmsnorm`, the kernels, :meth:`attention` and :meth:`silu_mul` layer by layer; for several, with
        a :attr:`StepPlan.rows_exact` plan, the same bits as stepping them one at a time."""
        layers, kv_heads, cap, d = k.shape
        m, hidden = x.shape
        if layers != len(plan.layers) or not (x.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
            raise ValueError("decode step: the residual and caches must be contiguous, one cache layer per model layer")
        if k.dtype != plan.dtype or v.dtype != plan.dtype or pos + m > cap or cos.shape != (m, d) or sin.shape != (m, d):
            raise ValueError(f"decode step: positions {pos}..{pos + m - 1}, dtype {k.dtype} or tables do not fit the caches")
        scratch = torch.empty(self._step_scratch(hidden, heads, kv_heads, d, plan.gate_up, pos, m), dtype=torch.float32)
        cos, sin = cos.contiguous(), sin.contiguous()
        failed = self._step(plan.layers, len(plan.layers), x.data_ptr(), m, hidden, heads, kv_heads, d, eps,
                            cos.data_ptr(), sin.data_ptr(), k.data_ptr(), v.data_ptr(), cap, pos, _DTYPES[plan.dtype],
                            plan.kernel_arg, scratch.data_ptr(), torch.get_num_threads(), int(self.simd))
        if failed:
            raise MemoryError("decode step: a kernel had no memory for its buffers")

    def step_batch(
        self, plan: StepPlan, x: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor], positions: list[int],
        cos: torch.Tensor, sin: torch.Tensor, heads: int, eps: float,
    ) -> None:
        """One decode token of each of ``m`` sequences (continuous batching): row ``r`` of the residual ``x``
        (fp32 ``[m, hidden]``, updated in place) is the next token of the sequence whose caches are ``ks[r]`` /
        ``vs[r]`` (``[layers, kv_heads, capacity_r, d]``), at position ``positions[r]``; ``cos``/``sin`` hold each
        row's table row ``[m, d]``. The matmuls take the m rows at once; norms, attention (each row over its own
        cache) and SiLU run row by row, so every row gets the bits :meth:`step` gives it alone."""
        m, hidden = x.shape
        if not (len(ks) == len(vs) == len(positions) == m) or cos.shape != (m, cos.shape[1]) or sin.shape != cos.shape:
            raise ValueError(f"decode batch: {m} rows need {m} caches, positions and table rows")
        if not x.is_contiguous():
            raise ValueError("decode batch: the residual must be contiguous")
        d = cos.shape[1]
        for k, v, at in zip(ks, vs, positions):
            if k.shape != v.shape or k.shape[0] != len(plan.layers) or k.shape[3] != d or at >= k.shape[2]:
                raise ValueError(f"decode batch: a cache {tuple(k.shape)} does not take position {at}")
            if not (k.is_contiguous() and v.is_contiguous()) or k.dtype != plan.dtype or v.dtype != plan.dtype:
                raise ValueError("decode batch: every cache must be contiguous and in the compute dtype")
        kv_heads = ks[0].shape[1]
        pointers = ctypes.c_void_p * m
        kp, vp = pointers(*(k.data_ptr() for k in ks)), pointers(*(v.data_ptr() for v in vs))
        caps = (ctypes.c_int * m)(*(k.shape[2] for k in ks))
        pos = (ctypes.c_int * m)(*positions)
        threads = torch.get_num_threads()
        size = self._batch_scratch(hidden, heads, kv_heads, d, plan.gate_up, ctypes.cast(pos, ctypes.c_void_p), m, threads)
        scratch = torch.empty(size, dtype=torch.float32)
        cos, sin = cos.contiguous(), sin.contiguous()
        failed = self._batch(plan.layers, len(plan.layers), x.data_ptr(), m, hidden, heads, kv_heads, d, eps,
                             cos.data_ptr(), sin.data_ptr(), ctypes.cast(kp, ctypes.c_void_p), ctypes.cast(vp, ctypes.c_void_p),
                             ctypes.cast(caps, ctypes.c_void_p), ctypes.cast(pos, ctypes.c_void_p), _DTYPES[plan.dtype],
                             plan.kernel_arg, scratch.data_ptr(), threads, int(self.simd))
        if failed:
            raise MemoryError("decode batch: a kernel had no memory for its buffers")

    def silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` for one row ``gu = [gate | up]``."""
        gu = gu.contiguous()
        n = gu.numel() // 2
        out = torch.empty(1, n, dtype=gu.dtype)
        self._silu(gu.data_ptr(), n, _DTYPES[gu.dtype], out.data_ptr(), int(self.simd))
        return out


class _Linear(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("n", ctypes.c_int32), ("k", ctypes.c_int32)]


class _Layer(ctypes.Structure):
    _fields_ = [("ln1", ctypes.c_void_p), ("ln2", ctypes.c_void_p)] + [(n, _Linear) for n in ("qkv", "o", "gate_up", "down")]


class _StepLinear(Protocol):
    out_features: int
    native: torch.Tensor | None
    bias: torch.Tensor | None
    kernel: Int4Kernel | Int4KernelF32 | None
    kernel_rows: int


class _StepLayer(Protocol):
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: _StepLinear
    o: _StepLinear
    gate_up: _StepLinear
    down: _StepLinear


@dataclass
class StepPlan:
    """Pointers to every layer's weights for :meth:`DecodeOps.step`."""

    layers: ctypes.Array  # of _Layer
    dtype: torch.dtype
    kernel_arg: int
    gate_up: int
    #: The tensors the pointers point into, held so they outlive the plan even if a layer drops them.
    tensors: list[torch.Tensor]

    @property
    def rows_exact(self) -> bool:
        """The kernel's product of a row does not depend on the other rows of its call (int8 activations), so
        several tokens stepped at once give the bits of the same tokens stepped one at a time."""
        return bool(self.kernel_arg & _STEP_INT8) and self.dtype == torch.float32


def plan_step(layers: list[_StepLayer], dtype: torch.dtype) -> StepPlan | None:
    """A whole-step plan where every linear of every layer multiplies one row with one of Reprise's int4 kernels
    (the int4 formats where the kernel serves); None otherwise (the per-operation path runs)."""
    linears = [x for l in layers for x in (l.qkv, l.o, l.gate_up, l.down)]
    kernels = {id(x.kernel) for x in linears}
    kernel = linears[0].kernel if linears else None
    if len(kernels) != 1 or kernel is None or any(x.native is None or x.kernel_rows < 2 for x in linears):
        return None
    if isinstance(kernel, Int4Kernel) and dtype == torch.bfloat16:
        arg = int(kernel.fast)
    elif isinstance(kernel, Int4KernelF32) and dtype == torch.float32:
        arg = kernel.step_arg
    else:
        return None
    norms = [t for l in layers for t in (l.ln1, l.ln2)]
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in norms):
        return None
    if any(x.bias is not None and (x.bias.dtype != dtype or not x.bias.is_contiguous()) for x in linears):
        return None

    def linear(x: _StepLinear) -> _Linear:
        assert x.native is not None
        k = x.native.shape[1] * GROUP  # both layouts: [rows / block, K / 32, block bytes]
        return _Linear(x.native.data_ptr(), None if x.bias is None else x.bias.data_ptr(), x.out_features, k)

    table = (_Layer * len(layers))(
        *(_Layer(l.ln1.data_ptr(), l.ln2.data_ptr(), linear(l.qkv), linear(l.o), linear(l.gate_up), linear(l.down)) for l in layers)
    )
    held = norms + [t for x in linears for t in (x.native, x.bias) if t is not None]
    return StepPlan(table, dtype, arg, layers[0].gate_up.out_features, held)


@functools.cache
def load_decode_ops(directory: Path) -> tuple[DecodeOps | None, str]:
    """The fused decode-step operations, or ``(None, why not)``: no compiler or a failed build."""
    return _load(DecodeOps, directory, lambda ops: True, "")
