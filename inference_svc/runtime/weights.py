"""Serving weight formats: dense, weight-only int8 and int4, and their conversion from a checkpoint.

Decoding one token reads every weight once, so decode speed is weight bytes
over memory bandwidth: int8 halves the bytes of bf16, int4 quarters them.
torch ships CPU kernels for both (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``); they are fast only with bf16 activations.
Prefill is compute-bound instead, and there oneDNN's dense bf16 GEMM beats the
weight-only kernels 2-4x, so a layer can also keep a dense bf16 copy used
when many rows are multiplied at once. That copy is made by dequantizing the
quantized weights, so prefill and decode run the same model up to rounding.
At load the dense bf16 weights are reordered once into oneDNN's blocked
layout (:meth:`Linear.pack_onednn`): ``F.linear`` on a plain weight reorders
it on every call, which cost 13-45% of a 16-64-row matmul on an AMD Zen 4,
for the same bits.

CPUs without native bf16 (AVX2-only ones such as AMD Zen 2/3, Intel before
Cooper Lake) keep fp32 activations. There torch's fp32 GEMM is slow (MKL takes
a generic path on AMD) and the weight-only kernels above are slow with fp32
inputs, so two formats use other kernels:

- ``int4`` under fp32: Reprise's AVX2 kernel (:class:`.native.Int4KernelF32`)
  multiplies decode rows by int4 weights (0.625 bytes per weight), and an fp16
  copy of the *dequantized* int4 weights serves many-row products through
  fbgemm, so both paths compute the same weights. The kernel's layout is
  written at conversion and saved (``native``).
- ``fp16``: fp16 weights through fbgemm for every row count
  (:class:`FbgemmKernels`, packed at load time); its LM head is int8.
"""

from __future__ import annotations

import enum
import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from inference_svc.runtime.native.int4_gemv import AMX_MAX_ROWS, F32_MAX_ROWS, Int4Kernel, Int4KernelF32

#: Rows (tokens) from which a layer with a dense copy uses it instead of the quantized kernel.
DENSE_MIN_ROWS = 8
INT4_GROUP = 32


class WeightFormat(str, enum.Enum):
    DENSE = "dense"
    INT8 = "int8"
    INT4 = "int4"
    #: fp16 weights through fbgemm with fp32 activations (CPUs without native bf16).
    FP16 = "fp16"


def fbgemm_available() -> bool:
    """True when this torch build has fbgemm's x86 kernels (x86-64 builds; not aarch64)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


@functools.cache
def onednn_packing() -> tuple[bool, str]:
    """Whether dense bf16 weights can be prepacked for oneDNN, and why not.

    Checked once per process on a probe layer: the packed product must be
    bit-identical to ``F.linear`` (the same oneDNN kernel, minus the per-call
    weight reorder), so packing never changes an answer.
    """
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN"
    g = torch.Generator().manual_seed(0)
    w, b = (torch.randn(72, 64, generator=g) * 0.05).bfloat16(), torch.randn(72, generator=g).bfloat16()
    try:
        packed = _onednn_reorder(w)
        same = all(
            torch.equal(_onednn_linear(x, packed, b), F.linear(x, w, b))
            for x in (torch.randn(rows, 64, generator=g).bfloat16() for rows in (1, 9, 64))
        )
    except (RuntimeError, AttributeError) as exc:  # an op missing or refusing on this CPU
        return False, f"oneDNN packing failed: {exc}"
    return (True, "") if same else (False, "oneDNN's packed product differs from F.linear on this CPU")


def _onednn_reorder(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w)


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class FbgemmKernels:
    """One layer's weights packed for fbgemm (fp32 activations): fp16, or int8 for the LM head.

    ``fp16``: weights rounded to fp16, multiplied in fp32 arithmetic for any
    number of rows, so decode and prefill compute the same function (reused KV
    equals recomputed KV up to fp32 rounding) and a row's result never depends
    on the other rows of its batch. ``int8``: per-output-channel int8 weights,
    the input quantized per call to 7 bits (AVX2's ``vpmaddubsw`` saturates
    16-bit pair sums at 8). Only the LM head uses it: its logits are read one
    row at a time and never feed the KV. In the layers that do feed it, that
    quantization turns rounding-level differences between a reused and a
    recomputed KV into different greedy replies (measured; see
    docs/inference.md).
    """

    def __init__(self, *, fp16: torch.Tensor | None = None, q8: torch.Tensor | None = None, s8: torch.Tensor | None = None) -> None:
        self.fp16: Any = None
        self.int8: Any = None
        if fp16 is not None:
            self.fp16 = torch.ops.quantized.linear_prepack_fp16(fp16.float(), None)
            self.nbytes = fp16.numel() * 2
        elif q8 is not None and s8 is not None:
            zeros = torch.zeros(q8.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # "quantized tensor creation is deprecated": it is fbgemm's packing input
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(q8, s8.double(), zeros, 0)
                self.int8 = torch.ops.quantized.linear_prepack(qw, None)
            self.nbytes = q8.numel() + s8.numel() * 4
        else:
            raise ValueError("fbgemm packing needs fp16 weights or int8 weights with fp32 scales")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16 is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x, self.fp16)
        return torch.ops.quantized.linear_dynamic(x, self.int8, True)


@dataclass
class Linear:
    """A linear layer ``y = x @ W.T + b`` in one serving format, optionally with a dense copy for prefill."""

    out_features: int
    dense: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    q8: torch.Tensor | None = None
    s8: torch.Tensor | None = None
    q4: torch.Tensor | None = None
    sz4: torch.Tensor | None = None
    group: int = INT4_GROUP
    #: fbgemm-packed weights (fp32 activations), built at load time and never saved.
    fbgemm: FbgemmKernels | None = None
    #: The dense bf16 weights in oneDNN's blocked layout, built at load time and never saved; replaces ``dense``.
    onednn: torch.Tensor | None = None
    #: The int4 weights laid out for Reprise's own kernel (:mod:`.native`): under bf16 built at load time from
    #: ``q4``/``sz4`` (and replacing them), under fp32 written at conversion and saved.
    native: torch.Tensor | None = None
    kernel: Int4Kernel | Int4KernelF32 | None = None
    #: Fewer rows than this go through ``kernel`` even where a dense copy exists (more with AMX).
    kernel_rows: int = DENSE_MIN_ROWS

    def __call__(self, x: torch.Tensor, as_rows: int | None = None) -> torch.Tensor:
        """``x`` is 2-D ``[rows, in_features]`` in the compute dtype.

        ``as_rows``: choose the kernel as for that many rows (a decode batch passes 1, so each of its rows,
        one per stream, takes the path it takes alone instead of the dense copy several rows would take).
        """
        rows = x.shape[0] if as_rows is None else as_rows
        if self.native is not None and self.kernel is not None and rows < self.kernel_rows:
            y = self.kernel(x, self.native, self.out_features)
            return y if self.bias is None else y.add_(self.bias)
        if self.fbgemm is not None and (self.native is None or rows >= DENSE_MIN_ROWS):
            y = self.fbgemm(x)
            return y if self.bias is None else y.add_(self.bias)
        has_dense = self.dense is not None or self.onednn is not None
        if has_dense and (rows >= DENSE_MIN_ROWS or (self.q8 is None and not self.has_int4)):
            if self.onednn is not None:
                return _onednn_linear(x, self.onednn, self.bias)
            return F.linear(x, self.dense, self.bias)
        if self.native is not None and self.kernel is not None:
            y = self.kernel(x, self.native, self.out_features)
        elif self.q4 is not None:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.q4, self.group, self.sz4)
        else:
            y = torch.ops.aten._weight_int8pack_mm(x, self.q8, self.s8)
        return y if self.bias is None else y.add_(self.bias)

    @property
    def has_int4(self) -> bool:
        """Holds int4 weights, in torch's layout or the native kernel's."""
        return self.q4 is not None or self.native is not None

    def rows(self, index: torch.Tensor | list[int]) -> torch.Tensor:
        """Rows of ``W`` (e.g. embedding lookup or a few LM-head rows) in the compute dtype."""
        if self.dense is not None:
            return self.dense[index]
        if self.q8 is None:
            raise ValueError("rows() needs a dense or int8 layer")
        return self.q8[index].to(self.s8.dtype) * self.s8[index].unsqueeze(-1)

    def pack_fbgemm(self) -> None:
        """Pack this layer for fbgemm (fp32 activations): fp16 weights, or int8 ones (the LM head).

        An fp16 layer (or an int4 layer's fp16 prefill copy) drops its unpacked
        copy (the packed one holds the same values); an int8 layer keeps it for
        :meth:`rows` (the LM head doubles as the embedding and gives the label rows).
        """
        if self.dense is not None and self.dense.dtype == torch.float16:
            self.fbgemm = FbgemmKernels(fp16=self.dense)
            self.dense = None
        elif self.q8 is not None and self.s8 is not None and self.s8.dtype == torch.float32:
            self.fbgemm = FbgemmKernels(q8=self.q8, s8=self.s8)
        else:
            raise ValueError("fbgemm packing needs fp16 weights or int8 weights with fp32 scales")

    def pack_onednn(self) -> None:
        """Reorder the dense bf16 weights once into oneDNN's layout (same products, no per-call reorder).

        Only for layers used as matmuls: :meth:`rows` needs the plain copy,
        which this drops. Call only where :func:`onednn_packing` says yes.
        """
        if self.dense is None or self.dense.dtype != torch.bfloat16:
            raise ValueError("oneDNN packing needs dense bf16 weights")
        self.onednn = _onednn_reorder(self.dense)
        self.dense = None

    def pack_native(self, kernel: Int4Kernel) -> None:
        """Re-lay the int4 weights out for Reprise's own kernel (same values; torch's copy is dropped)."""
        if self.q4 is None or self.sz4 is None or not kernel.supports(self.out_features, self.q4.shape[1] * 2, self.group):
            raise ValueError("native packing needs int4 weights of group 32 and a multiple of 64 output rows")
        self.native, self.kernel = kernel.pack(self.q4, self.sz4), kernel
        self.kernel_rows = AMX_MAX_ROWS if kernel.amx else DENSE_MIN_ROWS
        self.q4 = self.sz4 = None

    def use_fp32_kernel(self, kernel: Int4KernelF32) -> None:
        """Serve the saved fp32-kernel layout (``native``) with ``kernel``: rows below ``F32_MAX_ROWS``, or all
        rows where there is no fp16 prefill copy."""
        if self.native is None or self.native.dtype != torch.uint8 or self.native.dim() != 3:
            raise ValueError("the fp32 int4 kernel needs int4 weights converted for it")
        self.kernel, self.kernel_rows = kernel, F32_MAX_ROWS

    @property
    def decode_bytes(self) -> int:
        """Bytes one decode step reads from this layer."""
        if self.fbgemm is not None and self.native is None:
            return self.fbgemm.nbytes  # decode reads the whole packed copy
        dense = self.dense if self.onednn is None else self.onednn
        parts = (
            (self.native,) if self.native is not None
            else (self.q4, self.sz4) if self.q4 is not None
            else (self.q8, self.s8) if self.q8 is not None
            else (dense,)
        )
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    @property
    def memory_bytes(self) -> int:
        """Bytes this layer holds: its tensors plus any packed copies."""
        held = sum(t.numel() * t.element_size() for t in self.tensors("").values())
        packed = self.onednn.numel() * self.onednn.element_size() if self.onednn is not None else 0
        return held + packed + (self.fbgemm.nbytes if self.fbgemm is not None else 0)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {}
        for key in ("dense", "bias", "q8", "s8", "q4", "sz4", "native"):
            value = getattr(self, key)
            if value is not None:
                out[f"{name}.{key}"] = value
        return out

    @classmethod
    def from_tensors(cls, name: str, tensors: dict[str, torch.Tensor], group: int) -> Linear:
        get = lambda key: tensors.get(f"{name}.{key}")  # noqa: E731
        dense, q8, sz4, native = get("dense"), get("q8"), get("sz4"), get("native")
        out = (
            dense.shape[0] if dense is not None else q8.shape[0] if q8 is not None
            else sz4.shape[1] if sz4 is not None else Int4KernelF32.out_features(native)
        )
        return cls(out, dense, get("bias"), q8, get("s8"), get("q4"), sz4, group, native=native)


def quantize_int8(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``W ~= q * s[:, None]``."""
    w = w.float()
    s = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), s.to(dtype)


def dequantize_int8(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s.float()[:, None]


def int4_values(w: torch.Tensor, group: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of ``group`` input columns, tinygemm convention.

    ``W ~= (q - 8) * scale + zero`` per group. Returns ``q`` ``[N, K]`` (0..15),
    ``scale`` and ``zero`` ``[N, K/group]`` in ``dtype``, and the dequantized
    fp32 weight (for the dense prefill copy, so both paths use the same values).
    """
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15)
    zero = lo + 8.0 * scale
    scale_c, zero_c = scale.to(dtype), zero.to(dtype)
    deq = ((q - 8.0) * scale_c.float()[..., None] + zero_c.float()[..., None]).reshape(n, k)
    return q.to(torch.int32).reshape(n, k), scale_c, zero_c, deq


def quantize_int4(w: torch.Tensor, group: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`int4_values` for torch's int4 kernel: its packed weight, the ``[K/group, N, 2]`` scale/zero
    tensor and the dequantized weight."""
    q, scale_c, zero_c, deq = int4_values(w, group, dtype)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    sz = torch.stack([scale_c.t(), zero_c.t()], dim=-1).contiguous()
    return packed, sz, deq


def quantize_int4_fp32(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`int4_values` with fp16 scales, laid out for the fp32 kernel (:meth:`.native.Int4KernelF32.pack`),
    and the dequantized weight."""
    q, scale, zero, deq = int4_values(w, INT4_GROUP, torch.float16)
    return Int4KernelF32.pack(q, scale, zero), deq


def int4_fp32_supported(w_shape: tuple[int, int]) -> bool:
    return Int4KernelF32.supports(w_shape[0], w_shape[1], INT4_GROUP)


def int4_supported(w_shape: tuple[int, int], group: int = INT4_GROUP) -> bool:
    n, k = w_shape
    return k % group == 0 and k % 2 == 0 and n % 2 == 0


def make_linear(
    w: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: WeightFormat,
    dtype: torch.dtype,
    dense_copy: bool,
    group: int = INT4_GROUP,
) -> Linear:
    """Convert one fp32 weight ``[out, in]`` to a serving :class:`Linear`."""
    b = None if bias is None else bias.to(dtype).contiguous()
    if fmt is WeightFormat.INT4 and dtype == torch.float32:
        if not int4_fp32_supported(tuple(w.shape)) or group != INT4_GROUP:
            fmt = WeightFormat.FP16  # shape the fp32 kernel cannot take: keep this layer fp16 (fbgemm)
        else:
            packed, deq = quantize_int4_fp32(w)
            dense = deq.to(torch.float16).contiguous() if dense_copy else None  # packed for fbgemm at load
            return Linear(w.shape[0], dense=dense, bias=b, native=packed)
    if fmt is WeightFormat.INT4 and not int4_supported(tuple(w.shape), group):
        fmt = WeightFormat.INT8  # shape the int4 kernel cannot take: keep this layer int8
    if fmt is WeightFormat.DENSE:
        return Linear(w.shape[0], dense=w.to(dtype).contiguous(), bias=b)
    if fmt is WeightFormat.FP16:
        return Linear(w.shape[0], dense=w.to(torch.float16).contiguous(), bias=b)  # packed for fbgemm at load
    if fmt is WeightFormat.INT8:
        q, s = quantize_int8(w, dtype)
        dense = dequantize_int8(q, s).to(dtype).contiguous() if dense_copy else None
        return Linear(w.shape[0], dense=dense, bias=b, q8=q, s8=s)
    packed, sz, deq = quantize_int4(w, group, dtype)
    return Linear(w.shape[0], dense=deq.to(dtype).contiguous() if dense_copy else None, bias=b, q4=packed, sz4=sz, group=group)
