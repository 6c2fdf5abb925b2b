"""Serving weight formats: the fbgemm path used where the CPU has no native bf16 (fp32 activations), and
the oneDNN-prepacked dense bf16 copies used for prefill where it has."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_svc.runtime import weights
from inference_svc.runtime.weights import WeightFormat, dequantize_int8, fbgemm_available, make_linear, onednn_packing


def _weights(out: int = 96, inp: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * 0.05, torch.randn(out, generator=g) * 0.1


def test_this_torch_build_has_fbgemm() -> None:
    # The x86-64 torch wheel the project pins ships fbgemm; without it --dtype auto falls back to dense fp32.
    assert fbgemm_available()


def test_fp16_layer_computes_fp16_weights_in_fp32_for_any_row_count() -> None:
    w, b = _weights()
    layer = make_linear(w, b, WeightFormat.FP16, torch.float32, dense_copy=False)
    assert layer.dense is not None and layer.dense.dtype == torch.float16  # what is saved
    layer.pack_fbgemm()
    assert layer.dense is None and layer.fbgemm is not None  # the packed copy replaces it
    x = torch.randn(13, 64, generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, w.half().float(), b)
    for rows in (1, 3, 13):  # decode, a short prefill chunk, a batch: one kernel, no activation rounding
        torch.testing.assert_close(layer(x[:rows]), expected[:rows], atol=1e-5, rtol=1e-5)
    assert layer.decode_bytes == 96 * 64 * 2


def test_fp16_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    """KV computed one token at a time (decode) must equal KV computed in a prefill chunk; a text's score must
    not depend on what it shares a batch with."""
    w, _ = _weights()
    layer = make_linear(w, None, WeightFormat.FP16, torch.float32, dense_copy=False)
    layer.pack_fbgemm()
    g = torch.Generator().manual_seed(2)
    row = torch.randn(1, 64, generator=g)
    alone = layer(row)[0]
    for others in (1, 7, 30):
        # Other rows' values never matter (no shared activation scale): bit-identical for the same batch shape.
        first = layer(torch.cat([torch.randn(others, 64, generator=g), row]))[-1]
        second = layer(torch.cat([torch.randn(others, 64, generator=g) * 40, row]))[-1]
        assert torch.equal(first, second)
        # The batch size only picks the kernel's blocking: fp32 rounding, nothing like int8 activations' ~1%.
        torch.testing.assert_close(first, alone, atol=1e-6, rtol=1e-6)


def test_int8_head_decodes_through_fbgemm_and_keeps_exact_rows() -> None:
    w, _ = _weights()
    head = make_linear(w, None, WeightFormat.INT8, torch.float32, dense_copy=False)
    reference = dequantize_int8(head.q8, head.s8)
    head.pack_fbgemm()
    assert head.q8 is not None and head.fbgemm is not None and head.fbgemm.int8 is not None
    torch.testing.assert_close(head.rows([3, 5]), reference[[3, 5]])  # embedding and label rows stay exact
    x = torch.randn(1, 64)
    logits = head(x)
    rel = (logits - x @ reference.t()).norm() / (x @ reference.t()).norm()
    assert 0 < rel < 0.03  # the row is quantized to 7 bits on the fly: ~1% off, and really the int8 kernel
    assert head.memory_bytes == 2 * (96 * 64 + 96 * 4)  # int8 rows kept beside the packed copy


def test_packing_refuses_weights_it_cannot_take() -> None:
    dense = make_linear(torch.randn(8, 32), None, WeightFormat.DENSE, torch.float32, dense_copy=False)
    with pytest.raises(ValueError, match="fp16 weights or int8 weights with fp32 scales"):
        dense.pack_fbgemm()
    bf16 = make_linear(torch.randn(8, 32), None, WeightFormat.INT8, torch.bfloat16, dense_copy=False)
    with pytest.raises(ValueError, match="fp32 scales"):
        bf16.pack_fbgemm()


def test_onednn_packed_prefill_copy_computes_the_same_bits_as_the_plain_one() -> None:
    """Packing only removes F.linear's per-call weight reorder: every answer stays bit-identical."""
    packable, why_not = onednn_packing()
    w, b = _weights(out=160, inp=96, seed=3)
    plain = make_linear(w, b, WeightFormat.INT4, torch.bfloat16, dense_copy=True)
    packed = make_linear(w, b, WeightFormat.INT4, torch.bfloat16, dense_copy=True)
    if not packable:  # a CPU where oneDNN has no bf16 GEMM: the loader keeps the plain copy and logs this
        assert why_not
        return
    before = packed.memory_bytes
    packed.pack_onednn()
    assert packed.dense is None and packed.onednn is not None and packed.memory_bytes == before
    x = torch.randn(70, 96, generator=torch.Generator().manual_seed(4)).bfloat16()
    for rows in (weights.DENSE_MIN_ROWS, 33, 70):  # the prefill copy's row counts
        assert torch.equal(packed(x[:rows]), plain(x[:rows]))
    assert torch.equal(packed(x[:1]), plain(x[:1]))  # one row still takes the int4 kernel
    dense = make_linear(w, None, WeightFormat.DENSE, torch.bfloat16, dense_copy=False)
    expected = dense(x[:1])
    dense.pack_onednn()
    assert torch.equal(dense(x[:1]), expected) and dense.decode_bytes == 160 * 96 * 2  # dense format: every row count


def test_onednn_packing_refuses_what_is_not_dense_bf16() -> None:
    for fmt, dtype in ((WeightFormat.DENSE, torch.float32), (WeightFormat.INT4, torch.bfloat16)):
        layer = make_linear(torch.randn(64, 64), None, fmt, dtype, dense_copy=False)
        with pytest.raises(ValueError, match="dense bf16"):
            layer.pack_onednn()


def test_onednn_packing_check_says_why_when_the_op_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> torch.Tensor:
        raise RuntimeError("no bf16 kernel here")

    onednn_packing.cache_clear()
    monkeypatch.setattr(weights, "_onednn_reorder", lambda w: w)  # the real one refuses bf16 on AVX2-only CPUs
    monkeypatch.setattr(weights, "_onednn_linear", broken)
    try:
        assert onednn_packing() == (False, "oneDNN packing failed: no bf16 kernel here")
    finally:
        onednn_packing.cache_clear()
