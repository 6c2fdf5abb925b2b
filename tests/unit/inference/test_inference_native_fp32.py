"""Reprise's int4 kernel for fp32 activations (AVX2, int4_avx2.c): layout, arithmetic, routing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference_svc.runtime.native import int4_gemv
from inference_svc.runtime.native.int4_gemv import F32_MAX_ROWS, Int4KernelF32
from inference_svc.runtime.native.library import NativeUnavailable
from inference_svc.runtime.weights import FbgemmKernels, WeightFormat, int4_values, make_linear

from tests.support.cpu import cpu_has_avx2

pytestmark = pytest.mark.unit


def _weights(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 + torch.randn(n, 1, generator=g) * 0.02  # row offsets: zeros matter
    return int4_values(w, 32, torch.float16)  # q [n, k], fp16 scale and zero [n, k/32], dequantized fp32


def test_pack_puts_every_nibble_scale_and_zero_where_the_layout_says() -> None:
    """The layout documented in int4_avx2.c, read back byte by byte for every weight of two superblocks."""
    q, scale, zero, _ = _weights(64, 64)
    packed = Int4KernelF32.pack(q, scale, zero)
    assert packed.shape == (2, 2, 640) and packed.dtype == torch.uint8
    blocks = packed.numpy()
    for row in range(64):
        s, v, lane = row // 32, (row % 32) // 8, row % 8
        for col in range(64):
            g, c, i = col // 32, (col % 32) // 8, col % 8
            word = int.from_bytes(blocks[s, g, 4 * (8 * (4 * c + v) + lane) :][:4].tobytes(), "little")
            assert (word >> (4 * i)) & 0xF == q[row, col]
        for g in range(2):
            at = 512 + 2 * (row % 32)
            assert blocks[s, g, at : at + 2].tobytes() == scale[row, g].numpy().tobytes()
            assert blocks[s, g, at + 64 : at + 66].tobytes() == zero[row, g].numpy().tobytes()


@pytest.mark.parametrize(("n", "k", "rows"), [(32, 32, 1), (64, 96, 3), (96, 64, 8), (32, 4864, 17), (64, 896, 40)])
def test_every_path_multiplies_the_dequantized_weights(library: Path, n: int, k: int, rows: int) -> None:
    """Plain C and AVX2 one row at a time give the same bits; the several-row path sums in another order.

    17 rows of 4864 inputs need more group sums than the stack buffer (the heap path); 40 rows take
    the several-row path's blocks of three rows with a remainder of one.
    """
    q, scale, zero, deq = _weights(n, k)
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)) * 3
    reference = Int4KernelF32(library, mode=0)(x, packed, n)
    assert reference.shape == (rows, n) and reference.dtype == torch.float32
    exact = (x.double() @ deq.double().t()).float()
    torch.testing.assert_close(reference, exact, rtol=1e-4, atol=1e-5 * exact.abs().max().item())
    if not cpu_has_avx2():
        return
    assert torch.equal(Int4KernelF32(library, mode=1)(x, packed, n), reference)
    shared = Int4KernelF32(library, mode=2)(x, packed, n)
    torch.testing.assert_close(shared, reference, rtol=1e-5, atol=1e-6 * exact.abs().max().item())
    assert torch.equal(Int4KernelF32(library)(x, packed, n), shared if rows > 1 else reference)


def test_a_rows_product_does_not_depend_on_the_rest_of_its_batch(library: Path) -> None:
    """A text's projections are the same bits alone or in any batch of two or more rows (blocks of three,
    any remainder), and within fp32 rounding of a decode step's (one row)."""
    if not cpu_has_avx2():
        return
    shared, kernel = Int4KernelF32(library, mode=2), Int4KernelF32(library)
    q, scale, zero, _ = _weights(128, 256)
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.randn(50, 256, generator=torch.Generator().manual_seed(5))
    alone = torch.cat([shared(x[i : i + 1], packed, 128) for i in range(50)])
    for rows in (2, 3, 4, 7, 20, 49, 50):  # 50 rows: a pass of 48 and one of 2
        assert torch.equal(kernel(x[:rows], packed, 128), alone[:rows]), rows
    torch.testing.assert_close(kernel(x[:1], packed, 128), alone[:1], rtol=1e-5, atol=1e-5)
    q, scale, zero, _ = _weights(32, 4864)  # wide inputs: passes of 12 rows, to stay in L2
    packed = Int4KernelF32.pack(q, scale, zero)
    x = torch.randn(26, 4864, generator=torch.Generator().manual_seed(6))
    alone = torch.cat([shared(x[i : i + 1], packed, 32) for i in range(26)])
    assert torch.equal(kernel(x, packed, 32), alone)


def test_the_avx2_kernel_serves_exactly_where_the_cpu_has_avx2(library: Path, tmp_path: Path) -> None:
    kernel, why_not = int4_gemv.load_fp32(tmp_path)
    if cpu_has_avx2():
        assert kernel is not None and kernel.cpu_supported and why_not == ""
    else:
        assert kernel is None and "AVX2" in why_not
        with pytest.raises(NativeUnavailable, match="AVX2"):
            Int4KernelF32(library, mode=1)


def test_shapes_and_inputs_the_fp32_kernel_refuses(library: Path) -> None:
    assert Int4KernelF32.supports(96, 64, 32) and not Int4KernelF32.supports(80, 64, 32)
    assert not Int4KernelF32.supports(96, 48, 32) and not Int4KernelF32.supports(96, 64, 64)
    q, scale, zero, _ = _weights(80, 64)
    with pytest.raises(ValueError, match="cannot pack"):
        Int4KernelF32.pack(q, scale, zero)
    q, scale, zero, _ = _weights(64, 64)
    with pytest.raises(ValueError, match="cannot pack"):
        Int4KernelF32.pack(q, scale.bfloat16(), zero.bfloat16())
    packed = Int4KernelF32.pack(q, scale, zero)
    kernel = Int4KernelF32(library, mode=0)
    with pytest.raises(ValueError, match="does not fit"):
        kernel(torch.randn(1, 64).bfloat16(), packed, 64)
    with pytest.raises(ValueError, match="does not fit"):
        kernel(torch.randn(1, 96), packed, 64)


def test_an_int4_fp32_layer_routes_decode_rows_to_the_kernel_and_prefill_to_its_fp16_copy(library: Path) -> None:
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(128, 64, generator=g) * 0.05, torch.randn(128, generator=g) * 0.1
    layer = make_linear(w, b, WeightFormat.INT4, torch.float32, dense_copy=True)
    assert layer.native is not None and layer.dense is not None and layer.dense.dtype == torch.float16
    assert layer.q4 is None and layer.has_int4
    deq = int4_values(w, 32, torch.float16)[3]
    assert torch.equal(layer.dense, deq.half())  # the prefill copy holds the int4 weights, dequantized
    kernel = Int4KernelF32(library, mode=None if cpu_has_avx2() else 0)
    layer.pack_fbgemm()
    layer.use_fp32_kernel(kernel)
    assert layer.dense is None and layer.kernel_rows == F32_MAX_ROWS
    x = torch.randn(F32_MAX_ROWS, 64, generator=g)
    few = layer(x[:-1])
    assert torch.equal(few, kernel(x[:-1], layer.native, 128) + b)  # decode rows, short chunks: the kernel
    many = layer(x)
    assert torch.equal(many, FbgemmKernels(fp16=deq.half())(x) + b)  # a prefill chunk: fbgemm's fp16 copy
    torch.testing.assert_close(many[:-1], few, rtol=1e-3, atol=1e-3)  # the same weights, up to fp16 rounding
    assert layer.decode_bytes == layer.native.numel() == 128 * 64 * 5 // 8  # 0.625 bytes per weight
    assert layer.memory_bytes == layer.decode_bytes + b.numel() * 4 + 128 * 64 * 2


def test_without_a_prefill_copy_every_row_goes_through_the_kernel(library: Path) -> None:
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(4)) * 0.05
    layer = make_linear(w, None, WeightFormat.INT4, torch.float32, dense_copy=False)
    kernel = Int4KernelF32(library, mode=None if cpu_has_avx2() else 0)
    layer.use_fp32_kernel(kernel)
    x = torch.randn(30, 64)
    assert torch.equal(layer(x), kernel(x, layer.native, 64))


def test_shapes_the_fp32_kernel_cannot_take_stay_fp16() -> None:
    layer = make_linear(torch.randn(48, 64) * 0.05, None, WeightFormat.INT4, torch.float32, dense_copy=True)
    assert layer.native is None and layer.dense is not None and layer.dense.dtype == torch.float16
    with pytest.raises(ValueError, match="converted for it"):
        layer.use_fp32_kernel(None)  # type: ignore[arg-type]
