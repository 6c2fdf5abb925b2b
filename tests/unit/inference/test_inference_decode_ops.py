"""The fused one-token decode operations (decode_ops.c) against the torch operations they replace."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from inference_svc.runtime.native.decode_ops import DecodeOps, load_decode_ops, plan_step
from inference_svc.runtime.native.int4_gemv import Int4KernelF32

pytestmark = pytest.mark.unit

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module", params=[True, False], ids=["simd", "portable"])
def ops(library: Path, request: pytest.FixtureRequest) -> DecodeOps:
    """Both paths: AVX2 where the CPU has it (else the portable one twice), and the portable one."""
    return DecodeOps(library, simd=request.param)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _torch_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``Transformer._norm``: what the torch path computes."""
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))).mul_(weight)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_rmsnorm_adds_in_place_and_normalizes(ops: DecodeOps, dtype: torch.dtype, with_delta: bool) -> None:
    x = torch.randn(1, 896, generator=_gen(1)) * 4
    weight = torch.rand(896, generator=_gen(2)) * 2
    delta = (torch.randn(1, 896, generator=_gen(3)) * 3).to(dtype) if with_delta else None
    expected_x = x + delta.float() if delta is not None else x.clone()
    expected = _torch_norm(expected_x, weight, 1e-6).to(dtype)

    out = ops.add_rmsnorm(x, delta, weight, 1e-6, dtype)

    assert torch.equal(x, expected_x)  # the residual is updated in place, exactly as x += delta
    assert out.dtype == dtype and out.shape == (1, 896)
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-6)
    else:  # the same fp32 value up to its last bits, rounded to bf16: at most one bf16 step apart
        step = expected.float().abs() * 2**-7
        assert bool(((out.float() - expected.float()).abs() <= step).all())
        assert (out != expected).float().mean().item() < 0.02


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``Transformer._rope``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _tables(positions: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float().to(dtype), angles.sin().float().to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "d", "pos"), [(4, 2, 16, 0), (14, 2, 64, 37), (14, 2, 64, 300), (8, 8, 32, 5)])
def test_attention_rotates_writes_the_cache_and_attends_like_sdpa(
    ops: DecodeOps, dtype: torch.dtype, heads: int, kv_heads: int, d: int, pos: int
) -> None:
    """RoPE and the cache write give the torch path's bits; the attention output its value to float rounding.

    300 positions x 14 heads run on both threads; ``pos`` 0 attends to its own key alone.
    """
    cap = pos + 9  # capacity past the written row: nothing may land there
    cos, sin = _tables(cap, d, dtype)
    k = (torch.randn(kv_heads, cap, d, generator=_gen(4)) * 2).to(dtype)
    v = torch.randn(kv_heads, cap, d, generator=_gen(5)).to(dtype)
    qkv = (torch.randn(1, (heads + 2 * kv_heads) * d, generator=_gen(6)) * 2).to(dtype)
    k_before, v_before = k.clone(), v.clone()

    q_new = qkv[0, : heads * d].view(heads, d)
    k_new = qkv[0, heads * d : (heads + kv_heads) * d].view(kv_heads, d)
    v_new = qkv[0, (heads + kv_heads) * d :].view(kv_heads, d)
    q_rot, k_rot = _rope(q_new, cos[pos], sin[pos]), _rope(k_new, cos[pos], sin[pos])
    keys = torch.cat([k_before[:, :pos], k_rot[:, None]], dim=1).float()
    values = torch.cat([v_before[:, :pos], v_new[:, None]], dim=1).float()
    group = heads // kv_heads
    expected = F.scaled_dot_product_attention(
        q_rot.float().view(kv_heads, group, 1, d), keys[:, None], values[:, None]
    ).reshape(1, heads * d)

    out = ops.attention(qkv, cos[pos], sin[pos], k, v, pos, heads, torch.empty(ops.scratch_size(heads, d, pos)))

    assert torch.equal(k[:, pos], k_rot) and torch.equal(v[:, pos], v_new)
    assert torch.equal(k[:, :pos], k_before[:, :pos]) and torch.equal(k[:, pos + 1 :], k_before[:, pos + 1 :])
    assert torch.equal(v[:, pos + 1 :], v_before[:, pos + 1 :])
    assert out.dtype == dtype and out.shape == (1, heads * d)
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out.float(), expected, rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [4864, 4861])
def test_silu_mul_rounds_like_torch(ops: DecodeOps, dtype: torch.dtype, n: int) -> None:
    """4861 leaves a remainder after the eight-wide AVX2 loop."""
    gu = (torch.randn(1, 2 * n, generator=_gen(7)) * 6).to(dtype)
    gu[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.5]).to(dtype)  # far tails, zero
    gate, up = gu[:, :n], gu[:, n:]
    expected = F.silu(gate) * up

    out = ops.silu_mul(gu)

    assert out.dtype == dtype and out.shape == (1, n)
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-30)
    else:  # exp differs from torch's in its last fp32 bits: a rare one-step bf16 difference
        assert torch.allclose(out.float(), expected.float(), rtol=2**-7, atol=0)
        assert (out != expected).float().mean().item() < 0.01


def test_exp_stays_finite_and_accurate_across_the_range(ops: DecodeOps) -> None:
    """SiLU(x) * 1 = x / (1 + exp(-x)) exercises the exponential from its clamp to its overflow side."""
    x = torch.linspace(-120, 120, 4801)
    gu = torch.cat([x, torch.ones_like(x)])[None]
    out = ops.silu_mul(gu)[0].double()
    expected = x.double() / (1 + torch.exp(-x.double()))
    normal = expected.abs() > 1e-30
    assert bool(torch.isfinite(out).all())
    assert float(((out - expected)[normal] / expected[normal]).abs().max()) < 1e-6
    assert float(out[~normal].abs().max()) < 1e-30  # far left: ~0, from the clamped exponential


def test_refuses_what_it_would_read_or_write_wrongly(ops: DecodeOps) -> None:
    cos, sin = _tables(8, 16, torch.float32)
    k = torch.zeros(2, 8, 16)
    qkv, scratch = torch.zeros(1, 8 * 16), torch.empty(ops.scratch_size(4, 16, 7))
    with pytest.raises(ValueError, match="contiguous"):
        ops.attention(qkv, cos[0], sin[0], k.transpose(1, 2).contiguous().transpose(1, 2), k.clone(), 0, 4, scratch)
    with pytest.raises(ValueError, match="compute dtype"):
        ops.attention(qkv, cos[0], sin[0], k.bfloat16(), k.bfloat16(), 0, 4, scratch)
    with pytest.raises(ValueError, match="position 8"):
        ops.attention(qkv, cos[0], sin[0], k, k.clone(), 8, 4, torch.empty(ops.scratch_size(4, 16, 8)))
    with pytest.raises(ValueError, match="position 7"):
        ops.attention(qkv, cos[0], sin[0], k, k.clone(), 7, 4, scratch[:-1])
    with pytest.raises(ValueError, match="contiguous fp32"):
        ops.add_rmsnorm(torch.zeros(2, 4).t()[:1], None, torch.ones(2), 1e-6, torch.float32)


def test_supports_only_what_the_buffers_hold() -> None:
    assert DecodeOps.supports(torch.bfloat16, 64) and DecodeOps.supports(torch.float32, 256)
    assert not DecodeOps.supports(torch.float16, 64)
    assert not DecodeOps.supports(torch.float32, 512)


def test_without_a_compiler_the_loader_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    ops, why_not = load_decode_ops.__wrapped__(tmp_path)
    assert ops is None and "no C compiler" in why_not


def _layer(kernel: object, native_rows: torch.Tensor | None = torch.zeros(2, 2, 640, dtype=torch.uint8)) -> SimpleNamespace:
    linear = lambda: SimpleNamespace(out_features=64, native=native_rows, bias=None, kernel=kernel, kernel_rows=32)  # noqa: E731
    return SimpleNamespace(ln1=torch.ones(64), ln2=torch.ones(64), qkv=linear(), o=linear(), gate_up=linear(), down=linear())


def test_a_whole_step_plan_needs_every_layer_on_one_reprise_kernel(library: Path) -> None:
    kernel = Int4KernelF32(library)
    plan = plan_step([_layer(kernel), _layer(kernel)], torch.float32)
    assert plan is not None and len(plan.layers) == 2 and plan.kernel_arg == 1
    assert plan.layers[1].down.k == 64 and plan.layers[0].qkv.n == 64
    assert plan_step([_layer(kernel)], torch.bfloat16) is None  # the fp32 kernel under bf16
    assert plan_step([_layer(kernel), _layer(Int4KernelF32(library))], torch.float32) is None  # two kernels
    assert plan_step([_layer(kernel), _layer(kernel, None)], torch.float32) is None  # a layer without int4
    assert plan_step([_layer(None)], torch.float32) is None  # torch's kernels (dense, fbgemm)
    odd = _layer(kernel)
    odd.ln2 = torch.ones(64, dtype=torch.bfloat16)
    assert plan_step([odd], torch.float32) is None
