"""The fused one-token decode-step operations of ``decode_ops.c`` (:class:`DecodeOps`) and the whole-step plan
(:func:`plan_step`) that runs every layer's int4 linears with Reprise's kernels in one call."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from inference_svc.runtime.native.int4_gemv import GROUP, STEP_INT8, Int4Kernel, Int4KernelF32
from inference_svc.runtime.native.library import load_with

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
        return bool(self.kernel_arg & STEP_INT8) and self.dtype == torch.float32


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
    return load_with(DecodeOps, directory, lambda ops: True, "")
