"""Reprise's int4 decode kernel (inference_svc/runtime/native): the build, the weight layout, the arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inference_svc.runtime.model import top_indices
from inference_svc.runtime.native import int4_gemv
from inference_svc.runtime.native.int4_gemv import Int4Kernel
from inference_svc.runtime.native.library import NativeUnavailable, build
from inference_svc.runtime.native.torch_layout import relayout_torch_int4, torch_int4_block, torch_int4_layout, torch_int4_values
from inference_svc.runtime.weights import DENSE_MIN_ROWS, WeightFormat, make_linear, quantize_int4

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


def _int4(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 + torch.randn(n, 1, generator=g) * 0.02  # rows with an offset: zeros matter
    return quantize_int4(w, 32, torch.bfloat16)  # torch's packed nibbles, [K/32, N, 2] scale/zero, dequantized


def _close_to_exact(y: torch.Tensor, exact: torch.Tensor) -> None:
    # bf16 output: within a couple of bf16 steps of the fp32 product of the same quantized weights
    torch.testing.assert_close(y.float(), exact, rtol=2e-2, atol=2e-2 * exact.abs().max().item())


@pytest.mark.parametrize(("n", "k", "rows"), [(64, 32, 1), (128, 96, 3), (192, 64, 9), (64, 4096, 17)])
def test_reference_path_multiplies_the_packed_weights(library: Path, n: int, k: int, rows: int) -> None:
    """The plain C path reads the layout :meth:`Int4Kernel.pack` writes: a wrong nibble, scale or row shows.

    17 rows of 4096 inputs need more group sums than the kernel's stack buffer (the heap path).
    """
    q4, sz, deq = _int4(n, k)
    kernel = Int4Kernel(library, fast=False)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    packed = kernel.pack(q4, sz)
    assert torch.equal(packed, Int4Kernel.pack_reference(q4, sz))  # the C re-layout == the torch one
    y = kernel(x, packed, n)
    assert y.shape == (rows, n) and y.dtype == torch.bfloat16
    exact = x.float() @ deq.t()
    _close_to_exact(y, exact)
    torch.testing.assert_close(y, torch.ops.aten._weight_int4pack_mm_for_cpu(x, q4, 32, sz), rtol=2e-2, atol=1e-2)


def test_the_avx512_kernel_serves_exactly_where_the_cpu_has_avx512_bf16(library: Path, tmp_path: Path) -> None:
    probe = Int4Kernel(library, fast=False)
    kernel, why_not = int4_gemv.load(tmp_path)
    if probe.cpu_supported:
        assert kernel is not None and kernel.fast and why_not == ""
        q4, sz, deq = _int4(9728 // 8, 896)
        packed = kernel.pack(q4, sz)
        for rows in (1, 2, 7):
            x = torch.randn(rows, 896, generator=torch.Generator().manual_seed(rows)).bfloat16()
            fast, ref = kernel(x, packed, q4.shape[0]), probe(x, packed, q4.shape[0])
            _close_to_exact(fast, x.float() @ deq.t())
            # Same products, another summation order ((128 + q) x, then - 136 sum(x)): the bf16 results agree
            # to within one rounding step almost everywhere.
            assert (fast.float() - ref.float()).abs().le(ref.float().abs() * 2**-7 + 1e-6).float().mean() > 0.99
    else:
        assert kernel is None and "AVX512-BF16" in why_not
        with pytest.raises(NativeUnavailable, match="AVX512-BF16"):
            Int4Kernel(library, fast=True)


@pytest.mark.parametrize("rows", [2, 3, 4, 5, 8, 9, 16, 17, 33])
def test_several_rows_on_the_avx512_path_give_each_rows_bits_alone(library: Path, rows: int) -> None:
    """A decode batch (one row per stream) converts each weight once for all rows; every row's product is still
    the one it gets alone, bit for bit, so a stream's reply does not depend on who shares its pass. Row counts
    cover each tile shape (4, 2 and 1 blocks per pass) and tiles of 16 plus a remainder."""
    kernel = Int4Kernel(library)
    if not kernel.fast or kernel.amx:  # no AVX512-BF16 here; AMX machines take another path for several rows (below)
        assert kernel.amx or "avx512_bf16" not in _cpu_flags()
        return
    q4, sz, deq = _int4(192, 896)
    packed = kernel.pack(q4, sz)
    x = torch.randn(rows, 896, generator=torch.Generator().manual_seed(rows)).bfloat16()
    y = kernel(x, packed, 192)
    alone = torch.cat([kernel(x[r : r + 1], packed, 192) for r in range(rows)])
    assert torch.equal(y, alone)
    _close_to_exact(y, x.float() @ deq.t())


@pytest.mark.parametrize("rows", [2, 16, 17, 40, 64, 65, 130])
def test_the_amx_path_multiplies_several_rows_where_the_cpu_has_amx(library: Path, rows: int) -> None:
    """2+ rows go through AMX tiles in chunks of 16 rows and passes of 64: every chunk edge is covered."""
    kernel = Int4Kernel(library)
    if not kernel.amx:
        assert not (kernel.cpu_supported and _cpu_flags() >= {"amx_tile", "amx_bf16"})
        return
    q4, sz, deq = _int4(128, 4864 // 4)
    x = torch.randn(rows, deq.shape[1], generator=torch.Generator().manual_seed(rows)).bfloat16()
    packed = kernel.pack(q4, sz)
    y = kernel(x, packed, 128)
    _close_to_exact(y, x.float() @ deq.t())
    ref = Int4Kernel(library, fast=False)(x, packed, 128)
    assert (y.float() - ref.float()).abs().le(ref.float().abs() * 2**-7 + 1e-6).float().mean() > 0.99


def _cpu_flags() -> set[str]:
    line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def test_the_library_shares_torchs_openmp_runtime(library: Path) -> None:
    """Its threads must be torch's: a second OpenMP runtime would spin its own threads on the same cores."""
    script = (
        "import os, torch\n"
        "from inference_svc.runtime.native.int4_gemv import Int4Kernel\n"
        f"Int4Kernel({str(library)!r}, fast=False)\n"
        "maps = open(f'/proc/{os.getpid()}/maps').read().splitlines()\n"
        "print(sorted({l.split()[-1] for l in maps if 'libgomp' in l.split()[-1]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    runtimes = eval(done.stdout)  # noqa: S307 (our own subprocess's printed list)
    assert len(runtimes) == 1 and Path(runtimes[0]).parent == Path(torch.__file__).parent / "lib", runtimes


def test_build_is_cached_per_source_and_says_why_it_cannot_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not compiled again
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(NativeUnavailable, match="no C compiler"):
        build(tmp_path / "a")
    assert int4_gemv.load(tmp_path / "b") == (None, "no C compiler ('no-such-compiler-here' not found; install gcc)")
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    with pytest.raises(NativeUnavailable, match="false failed"):
        build(tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())


def test_shapes_and_inputs_the_kernel_refuses(library: Path) -> None:
    assert Int4Kernel.supports(128, 64, 32) and not Int4Kernel.supports(96, 64, 32) and not Int4Kernel.supports(128, 64, 64)
    kernel = Int4Kernel(library, fast=False)
    q4, sz, _ = _int4(96, 64)
    for pack in (kernel.pack, Int4Kernel.pack_reference):
        with pytest.raises(ValueError, match="cannot pack"):
            pack(q4, sz)
    q4, sz, _ = _int4(64, 64)
    packed = kernel.pack(q4, sz)
    with pytest.raises(ValueError, match="does not fit"):
        kernel(torch.randn(1, 64), packed, 64)  # fp32 input
    with pytest.raises(ValueError, match="does not fit"):
        kernel(torch.randn(1, 96).bfloat16(), packed, 64)


def test_a_natively_packed_layer_keeps_its_values_and_byte_count(library: Path) -> None:
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(128, 64, generator=g) * 0.05, torch.randn(128, generator=g) * 0.1
    layer = make_linear(w, b, WeightFormat.INT4, torch.bfloat16, dense_copy=True)
    x = torch.randn(DENSE_MIN_ROWS, 64, generator=g).bfloat16()
    before = (layer(x[:1]), layer(x), layer.decode_bytes)
    layer.pack_native(Int4Kernel(library, fast=False))
    assert layer.q4 is None and layer.sz4 is None and layer.native is not None and layer.has_int4
    assert layer.kernel_rows == DENSE_MIN_ROWS  # the reference path has no AMX
    torch.testing.assert_close(layer(x[:1]), before[0], rtol=2e-2, atol=1e-2)  # one row: the native kernel
    assert torch.equal(layer(x), before[1])  # DENSE_MIN_ROWS rows: still the dense copy
    layer.kernel_rows = DENSE_MIN_ROWS + 1  # as with AMX: these rows now go through the kernel too
    assert not torch.equal(layer(x), before[1])
    torch.testing.assert_close(layer(x), before[1], rtol=2e-2, atol=1e-2)
    assert layer.decode_bytes == before[2]  # the same bytes, laid out differently
    with pytest.raises(ValueError, match="native packing needs"):
        layer.pack_native(Int4Kernel(library, fast=False))  # nothing left to pack


def test_top_indices_finds_the_same_set_as_topk() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64 * 200, generator=g)
    x[1, 640:704] += 10  # all of the best values in one block
    x[2, ::64] += 10  # each best value in a different block
    for row in range(3):
        got = set(top_indices(x, 64)[row].tolist())
        assert got == set(x.topk(64, dim=-1).indices[row].tolist())
    small = torch.randn(2, 1000, generator=g)  # not a multiple of the block: plain topk
    assert torch.equal(top_indices(small, 8).sort().values, small.topk(8).indices.sort().values)


def test_norm_is_bit_identical_to_rms_norm() -> None:
    from inference_svc.runtime.model import Transformer

    class Shape:
        hidden, eps = 96, 1e-6

    norm = Transformer.__new__(Transformer)
    norm.shape = Shape()  # type: ignore[assignment]
    g = torch.Generator().manual_seed(9)
    w = torch.randn(96, generator=g)
    for rows in (1, 7, 64, 300):
        x = torch.randn(rows, 96, generator=g) * 4
        assert torch.equal(norm._norm(x, w), F.rms_norm(x, (96,), w, 1e-6))


@pytest.mark.parametrize("n", [128, 400, 1152])  # 400: a last block of 16 rows (torch pairs neighbours there)
def test_torchs_int4_layout_is_read_and_written_for_either_kind_of_cpu(n: int) -> None:
    """torch packs int4 weights in 64-row blocks on AVX-512 and 32-row ones on AVX2; a copy converted on one
    kind must be re-laid out on the other (an image is built on one machine and runs on others)."""
    q = torch.randint(0, 16, (n, 96), generator=torch.Generator().manual_seed(n), dtype=torch.int32)
    packed_here = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    here = torch_int4_block()
    assert torch.equal(torch_int4_layout(q, here), packed_here)
    for block in (32, 64):
        written = torch_int4_layout(q, block)
        assert torch.equal(torch_int4_values(written, block), q.to(torch.uint8))
        assert torch.equal(relayout_torch_int4(written, block), packed_here)
    assert not torch.equal(torch_int4_layout(q, 32), torch_int4_layout(q, 64))  # they do differ
