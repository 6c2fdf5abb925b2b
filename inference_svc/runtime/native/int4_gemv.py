"""The int4 weight kernels: :class:`Int4Kernel` (bf16 activations: ``int4_avx512bf16.c``, ``int4_amx.c``) and
:class:`Int4KernelF32` (fp32 activations on AVX2, ``int4_avx2.c``, or int8 ones, ``int4_q8.c``; for CPUs without bf16)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from inference_svc.runtime import cpu
from inference_svc.runtime.native.library import NativeUnavailable, load_with
from inference_svc.runtime.native.torch_layout import torch_int4_block

#: The kernel's name where it serves (ModelInfo's ``int4_kernel``; otherwise "torch").
NAME = "reprise-avx512bf16"
#: Output rows per kernel work unit; a layer's output size must be a multiple.
SUPER_ROWS = 64
GROUP = 32
_BLOCK_BYTES = 320  # 16 rows x 32 inputs: 256 bytes of nibbles + 16 bf16 scales + 16 bf16 zeros
#: Rows from which a layer's dense bf16 copy beats the AMX path (on the Xeon: the four layer shapes
#: together 1.45x faster here at 16 rows, 1.2x at 22, 1.08x at 32, 0.83x at 48; see docs/inference.md).
AMX_MAX_ROWS = 32


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
        ``int4_avx512bf16.c``), in C (``int4_amx.c``).

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
STEP_INT8 = 0x10
STEP_VNNI = 0x20
#: With STEP_VNNI: one row takes the AVX2 path (mode 1) instead of the one-row AVX512-VNNI one (mode 4).
STEP_ROW_AVX2 = 0x40
_NO_VNNI = "this CPU has no AVX512-VNNI"


def _double_pumped_avx512() -> bool:
    """AMD Zen 4 (family 25 with AVX-512) runs 512-bit instructions as two 256-bit halves.

    There one row decodes faster through the AVX2 path than through the one-row VNNI path (96.1 vs 88.4
    tok/s, ``vnni_effect`` of bench-inference 2026-12-07 17:39: ``git show 7b15b36:bench/results/
    inference-amd-epyc-zen4.json``), while several rows
    gain from VNNI (its several-row path keeps each weight vector in registers for all of them). On Intel
    (full-width AVX-512) the one-row VNNI path is the faster one (1.06x decode on a 2-core Xeon). The two
    paths give the same bits, so this choice changes speed only, never an answer or the model identity.
    """
    facts = cpu.fields()
    return facts.get("vendor_id") == "AuthenticAMD" and facts.get("cpu family") == "25"


class Int4KernelF32:
    """int4 weights against fp32 activations on AVX2 (``int4_avx2.c``), for CPUs without bf16.

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
    def row_vnni(self) -> bool:
        """One row through the AVX512-VNNI path too (else the AVX2 one; same bits, see _double_pumped_avx512).
        Derived from ``vnni`` so that switching the VNNI paths off (the benchmark's A/B) switches both."""
        return self.vnni and not _double_pumped_avx512()

    @property
    def _rows_mode(self) -> int:
        """The path of a call with several rows."""
        return self.mode if self.mode is not None else 3 if self.vnni else 2

    @property
    def _row_mode(self) -> int:
        """The path of a call with one row."""
        return self.mode if self.mode is not None else 4 if self.row_vnni else 1

    @property
    def step_arg(self) -> int:
        """The kernel argument a one-call step passes for one row (``decode_ops.c``'s ``linear``)."""
        mode = self.mode if self.mode is not None else 1
        if self.activations != "int8":
            return mode
        vnni = STEP_VNNI | (0 if self.row_vnni else STEP_ROW_AVX2) if self._rows_mode == 3 else 0
        return mode | STEP_INT8 | vnni

    @staticmethod
    def supports(n: int, k: int, group: int) -> bool:
        return group == GROUP and n % F32_ROWS == 0 and k % GROUP == 0

    @staticmethod
    def out_features(packed: torch.Tensor) -> int:
        return packed.shape[0] * F32_ROWS

    @staticmethod
    def pack(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """int4 values ``q`` ``[N, K]`` (0..15) and fp16 ``scale``/``zero`` ``[N, K/32]`` -> ``[N/32, K/32, 640]`` bytes.

        The layout is described at the top of ``int4_avx2.c``. Runs at conversion time.
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


@functools.cache
def load(directory: Path) -> tuple[Int4Kernel | None, str]:
    """The serving kernel, or ``(None, why not)``: no compiler, a failed build, or no AVX512-BF16."""
    return load_with(Int4Kernel, directory, lambda k: k.fast, "this CPU has no AVX512-BF16")


@functools.cache
def load_fp32(directory: Path, activations: str = "fp32") -> tuple[Int4KernelF32 | None, str]:
    """The fp32-activation kernel (``activations``: "fp32" or "int8"), or ``(None, why not)``: no compiler, a
    failed build, or no AVX2/FMA/F16C."""
    kind = functools.partial(Int4KernelF32, activations=activations)
    return load_with(kind, directory, lambda k: k.cpu_supported, _NO_AVX2)
