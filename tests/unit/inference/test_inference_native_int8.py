"""int8 activations against the fp32 kernel's int4 layout (int4_q8.c, ``reprise_int4_gemm_q8``).

What it promises: each row quantized per 32 inputs on its own, integer products, one fp32 combine order,
so every path (plain C, AVX2 one row, AVX2 several rows) gives the same bits and a row's product never
depends on the other rows of its call: a token's KV is the same computed alone (decode) or in a chunk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference_svc.runtime import precision
from inference_svc.runtime.loader import RuntimeSpec
from inference_svc.runtime.native import int4_gemv
from inference_svc.runtime.native.int4_gemv import Int4KernelF32
from inference_svc.runtime.native.library import NativeUnavailable
from inference_svc.runtime.weights import WeightFormat, int4_values, make_linear

from tests.support.cpu import cpu_has_avx2, cpu_has_avx512vnni, int8_kernel_name

pytestmark = pytest.mark.unit


def _kernel(library: Path, mode: int | None = None) -> Int4KernelF32:
    return Int4KernelF32(library, mode=mode if cpu_has_avx2() else 0, activations="int8")


def _weights(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 + torch.randn(n, 1, generator=g) * 0.02  # row offsets: zeros matter
    return int4_values(w, 32, torch.float16)


def _reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in float64: per group, (scale * d) * sum(q * code) + (zero - 8 scale) * d * sum(code),
    with codes rounded half away from zero from x * 127 / max|x|."""
    m, k = x.shape
    xg = x.double().view(m, k // 32, 32)
    amax = xg.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax.float().clamp(min=1e-30), torch.zeros_like(amax.float()))
    v = xg.float() * inv  # fp32, as the kernel computes it
    codes = torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v)).clamp(-127, 127).double()
    d = (amax.float() / 127.0).double()  # [m, g, 1]
    qg = q.double().view(q.shape[0], k // 32, 32)  # [n, g, 32]
    dots = torch.einsum("mgt,ngt->mng", codes, qg)  # exact integers
    s, z = scale.double(), zero.double()  # [n, g]
    sums = (d[..., 0].float() * codes.sum(-1).float()).double()  # one fp32 rounding, as the kernel's
    return (s[None] * d[:, None, :, 0] * dots + (z - 8 * s)[None] * sums[:, None, :]).sum(-1)


@pytest.mark.parametrize(("n", "k", "rows"), [(32, 32, 1), (64, 96, 3), (96, 64, 8), (32, 4864, 17), (64, 896, 67)])
def test_every_path_gives_the_same_bits_as_the_integer_reference(library: Path, n: int, k: int, rows: int) -> None:
    """17 rows of 4864 inputs outgrow the stack buffer (the heap path); 67 rows take the several-row path's
    passes of 64 and an odd remainder (a row paired with itself)."""
    q, scale, zero, _ = _weights(n, k)
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)) * 3
    plain = Int4KernelF32(library, mode=0, activations="int8")(x, packed, n)
    assert plain.shape == (rows, n) and plain.dtype == torch.float32
    expected = _reference(x, q, scale, zero)
    torch.testing.assert_close(plain.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    if not cpu_has_avx2():
        return
    for mode in (1, 2, None) + ((3, 4) if cpu_has_avx512vnni() else ()):
        assert torch.equal(_kernel(library, mode)(x, packed, n), plain), mode


def test_a_rows_product_is_the_same_alone_in_a_decode_step_or_in_any_chunk(library: Path) -> None:
    """Unlike fp32 activations (two summation orders), one row and many rows give one answer."""
    kernel = _kernel(library)
    q, scale, zero, _ = _weights(128, 256)
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.randn(70, 256, generator=torch.Generator().manual_seed(5))
    alone = torch.cat([kernel(x[i : i + 1], packed, 128) for i in range(70)])
    for rows in (2, 3, 4, 7, 20, 64, 65, 70):
        assert torch.equal(kernel(x[:rows], packed, 128), alone[:rows]), rows
    assert torch.equal(kernel(x[33:40], packed, 128), alone[33:40])  # where a row sits in its call does not matter


def test_int8_activations_stay_close_to_the_fp32_product(library: Path) -> None:
    """Quantization noise only: per group the codes keep ~1/254 of the group's largest input, so the product
    stays within ~1% of the fp32 one. An outlier (as residual streams have) coarsens only its own group:
    the error stays well under that of one scale per row (what per-tensor dynamic quantization does)."""
    q, scale, zero, deq = _weights(256, 896)
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.randn(16, 896, generator=torch.Generator().manual_seed(7))
    error = lambda got, exact: ((got - exact).norm() / exact.norm()).item()  # noqa: E731
    assert error(_kernel(library)(x, packed, 256), x @ deq.t()) < 0.01
    x[:, 5] = 40.0
    per_row = torch.round(x * (127 / x.abs().amax(-1, keepdim=True))) * (x.abs().amax(-1, keepdim=True) / 127)
    ours, one_scale = error(_kernel(library)(x, packed, 256), x @ deq.t()), error(per_row @ deq.t(), x @ deq.t())
    assert ours < one_scale / 3, (ours, one_scale)


def test_zero_rows_and_zero_groups_quantize_to_nothing(library: Path) -> None:
    q, scale, zero, deq = _weights(64, 128)
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.zeros(3, 128)
    x[1, 32:64] = torch.linspace(-1, 1, 32)  # one group of row 1 non-zero
    got = _kernel(library)(x, packed, 64)
    assert torch.equal(got[0], torch.zeros(64)) and torch.equal(got[2], torch.zeros(64))
    torch.testing.assert_close(got[1], x[1] @ deq.t(), rtol=0.02, atol=0.02 * (x[1] @ deq.t()).abs().max().item())


def test_a_layer_with_int8_activations_sends_every_row_count_to_the_kernel(library: Path) -> None:
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(128, 64, generator=g) * 0.05, torch.randn(128, generator=g) * 0.1
    layer = make_linear(w, b, WeightFormat.INT4, torch.float32, dense_copy=False)
    kernel = _kernel(library)
    layer.use_fp32_kernel(kernel)
    x = torch.randn(100, 64, generator=g)
    y = layer(x)
    assert torch.equal(y, kernel(x, layer.native, 128) + b)
    assert torch.equal(layer(x[:1]), y[:1]) and torch.equal(layer(x[40:90]), y[40:90])
    assert layer.memory_bytes == layer.native.numel() + b.numel() * 4  # no fp16 copy


def test_the_kernel_reports_its_activations_and_refuses_unknown_ones(library: Path) -> None:
    assert _kernel(library).name == int8_kernel_name() and Int4KernelF32(library, mode=0).name == int4_gemv.F32_NAME
    assert _kernel(library, 1).step_arg == 1 | 0x10 and Int4KernelF32(library, mode=2).step_arg == 2
    # By default a step's several rows take the VNNI path where the CPU has it (decode_ops.c's STEP_VNNI), and one
    # row the AVX2 path where 512-bit instructions are double-pumped (AMD Zen 4: STEP_ROW_AVX2; the same bits).
    kernel = _kernel(library)
    row_avx2 = int4_gemv.STEP_ROW_AVX2 if cpu_has_avx512vnni() and int4_gemv._double_pumped_avx512() else 0
    assert kernel.step_arg == 1 | 0x10 | (0x20 if cpu_has_avx512vnni() else 0) | row_avx2
    assert kernel.row_vnni == (cpu_has_avx512vnni() and not row_avx2)
    assert Int4KernelF32(library).name == int4_gemv.F32_NAME  # fp32 activations have no VNNI path
    with pytest.raises(ValueError, match="activations 'int4'"):
        Int4KernelF32(library, activations="int4")


def test_int8_activations_drop_the_prefill_copy_from_the_converted_format() -> None:
    spec = RuntimeSpec(torch.float32, WeightFormat.INT4, dense_prefill=True, activations="int8")
    assert spec.int8_activations and not spec.prefill_copy and spec.name == "int4-fp32-tied-h4"
    fp32 = RuntimeSpec(torch.float32, WeightFormat.INT4, dense_prefill=True)
    assert fp32.prefill_copy and fp32.name == "int4-fp32-tied-pf-h4"
    bf16 = RuntimeSpec(torch.bfloat16, WeightFormat.INT4, dense_prefill=True, activations="int8")
    assert not bf16.int8_activations and bf16.prefill_copy  # activations apply under fp32 only


def test_activations_resolve_to_int8_only_for_int4_under_fp32() -> None:
    int4_fp32 = precision.Precision(torch.float32, WeightFormat.INT4, "")
    bf16 = precision.Precision(torch.bfloat16, WeightFormat.INT4, "")
    fp16 = precision.Precision(torch.float32, WeightFormat.FP16, "")
    assert precision.activations("auto", int4_fp32) == "int8" and precision.activations("fp32", int4_fp32) == "fp32"
    assert precision.activations("int8", int4_fp32) == "int8"
    assert precision.activations("auto", bf16) == "fp32" and precision.activations("auto", fp16) == "fp32"
    with pytest.raises(ValueError, match="int8 applies to int4 weights under fp32.*int4 weights with bf16"):
        precision.activations("int8", bf16)
    with pytest.raises(ValueError, match="expected one of"):
        precision.activations("int16", int4_fp32)


def test_the_vnni_path_is_refused_where_it_cannot_run(library: Path) -> None:
    """Modes 3 and 4 multiply int8 codes with VPDPBUSD: they need AVX512-VNNI and int8 activations."""
    for mode in (3, 4):
        with pytest.raises(NativeUnavailable, match=f"mode {mode} is for int8 activations"):
            Int4KernelF32(library, mode=mode, activations="fp32")
    if not cpu_has_avx512vnni():
        for mode in (3, 4):
            with pytest.raises(NativeUnavailable, match="AVX512-VNNI"):
                Int4KernelF32(library, mode=mode, activations="int8")
