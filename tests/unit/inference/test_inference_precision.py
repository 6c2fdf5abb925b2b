"""Choosing the compute dtype: from facts about the CPU, never from a timing at start."""

from __future__ import annotations

import time

import pytest
import torch

from inference_svc.runtime import precision


def test_race_alternates_the_candidates_so_a_burst_hits_both() -> None:
    calls: list[str] = []
    precision.race(lambda: calls.append("a"), lambda: calls.append("b"), repeat=4)
    assert calls == ["a", "b"] * 5  # one warm-up pair, then strictly alternating


def test_race_keeps_the_best_time_of_each() -> None:
    slow_first = iter([0.02, 0.02, 0.02])  # a burst of other work during a's first runs

    def a() -> None:
        time.sleep(next(slow_first, 0.0))

    def b() -> None:
        time.sleep(0.005)

    best_a, best_b = precision.race(a, b, repeat=6)
    assert best_a < 0.004 < best_b


def test_explicit_choices_need_no_measurement() -> None:
    assert precision.choose("fp32", "auto").weights is precision.WeightFormat.DENSE  # the exact reference
    chosen = precision.choose("fp32", "fp16")
    assert (chosen.dtype, chosen.weights) == (torch.float32, precision.WeightFormat.FP16) and "fbgemm" in chosen.reason
    with pytest.raises(ValueError, match="--weights int8 needs --dtype bf16"):
        precision.choose("fp32", "int8")
    with pytest.raises(ValueError, match="int4 under fp32 needs Reprise's AVX2 int4 kernel"):
        precision.choose("fp32", "int4")  # nothing said the kernel is here
    with pytest.raises(ValueError, match="fp16 runs with fp32 activations"):
        precision.choose("bf16", "fp16")
    with pytest.raises(ValueError, match="expected auto, bf16 or fp32"):
        precision.choose("fp16", "auto")


def test_auto_without_native_bf16_serves_fp16_through_fbgemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("a start never times"))
    chosen = precision.choose("auto", "auto")
    assert (chosen.dtype, chosen.weights) == (torch.float32, precision.WeightFormat.FP16)
    assert chosen.reason == "auto: no AVX512-BF16/AMX on this CPU; fp16 weights through fbgemm"
    assert precision.choose("auto", "dense").weights is precision.WeightFormat.DENSE
    with pytest.raises(ValueError, match="int8 needs --dtype bf16"):
        precision.choose("auto", "int8")


def test_fp32_serves_int4_where_the_avx2_kernel_builds_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    asks: list[bool] = []

    def probe(usable: bool, detail: str):  # type: ignore[no-untyped-def]
        return lambda: asks.append(usable) or (usable, detail)

    chosen = precision.choose("auto", "auto", probe(True, "reprise-avx2 builds and runs here"))
    assert (chosen.dtype, chosen.weights) == (torch.float32, precision.WeightFormat.INT4)
    assert "Reprise's AVX2 kernel" in chosen.reason and "builds and runs here" in chosen.reason
    chosen = precision.choose("auto", "auto", probe(False, "no C compiler"))
    assert chosen.weights is precision.WeightFormat.FP16 and "int4 not served (no C compiler)" in chosen.reason
    assert precision.choose("fp32", "int4", probe(True, "")).weights is precision.WeightFormat.INT4
    assert precision.choose("auto", "int4", probe(True, "")).dtype == torch.float32
    with pytest.raises(ValueError, match="needs Reprise's AVX2 int4 kernel: no C compiler"):
        precision.choose("fp32", "int4", probe(False, "no C compiler"))
    # The exact reference and fp16 never ask.
    assert precision.choose("fp32", "auto", probe(True, "")).weights is precision.WeightFormat.DENSE
    assert precision.choose("auto", "fp16", probe(True, "")).weights is precision.WeightFormat.FP16
    assert len(asks) == 5
    monkeypatch.setattr(precision, "fbgemm_available", lambda: False)  # the prefill copy runs on fbgemm
    with pytest.raises(ValueError, match="needs fbgemm for its prefill copy"):
        precision.choose("fp32", "int4", probe(True, ""))


def test_auto_with_fp16_weights_asked_for_needs_no_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert precision.choose("auto", "fp16").weights is precision.WeightFormat.FP16


def test_without_fbgemm_fp32_falls_back_to_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(precision, "fbgemm_available", lambda: False)
    chosen = precision.choose("auto", "auto")
    assert chosen.weights is precision.WeightFormat.DENSE and "no fbgemm" in chosen.reason
    with pytest.raises(ValueError, match="needs fbgemm"):
        precision.choose("fp32", "fp16")


def test_amx_serves_bf16_without_timing_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("a start never times"))
    chosen = precision.choose("auto", "auto", lambda: pytest.fail("with AMX the AVX2 kernel is not asked"))
    assert (chosen.dtype, chosen.weights) == (torch.bfloat16, precision.WeightFormat.INT4)
    assert "AMX" in chosen.reason
    for weights in ("int4", "int8"):
        assert precision.choose("auto", weights).dtype == torch.bfloat16


def test_avx512_bf16_without_amx_serves_int8_activations_where_the_kernel_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """AMD Zen 4/5: integer products (VNNI) beat VDPBF16PS for prompts and batched decode (docs/inference.md)."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("a start never times"))
    chosen = precision.choose("auto", "auto", (lambda: (True, "kernel builds")))
    assert (chosen.dtype, chosen.weights) == (torch.float32, precision.WeightFormat.INT4)
    assert precision.activations("auto", chosen) == "int8" and "without AMX" in chosen.reason
    # the kernel cannot serve (no compiler in the image): bf16, said why
    chosen = precision.choose("auto", "auto", (lambda: (False, "no C compiler")))
    assert chosen.dtype == torch.bfloat16 and "no C compiler" in chosen.reason
    # asked for explicitly, bf16 and int8 weights stay what they were
    assert precision.choose("bf16", "auto", lambda: (True, "")).dtype == torch.bfloat16
    assert precision.choose("auto", "int8", lambda: (True, "")).dtype == torch.bfloat16


@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_asked_for_is_served_and_where_the_cpu_emulates_it_the_log_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native_bf16: bool
) -> None:
    """An image built with MODEL_DTYPE=bf16 landing on a node without AVX512-BF16 must not be slow in silence."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native_bf16)
    with caplog.at_level("WARNING", logger=precision.__name__):
        chosen = precision.choose("bf16", "auto")
    assert (chosen.dtype, chosen.weights) == (torch.bfloat16, precision.WeightFormat.INT4)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if native_bf16:
        assert chosen.reason == "bf16 requested" and not warned
    else:
        assert "emulates" in chosen.reason
        assert len(warned) == 1 and "MODEL_DTYPE=auto" in warned[0]


def _formats(dtype: str, weights: str, activations: str = "auto") -> list[tuple[torch.dtype, str, str]]:
    return [(p.dtype, p.weights.value, acts) for p, acts in precision.anywhere(dtype, weights, activations)]


def test_anywhere_lists_what_each_kind_of_cpu_would_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an image must carry to serve `--dtype auto` on every node, asked without measuring this one."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: pytest.fail("anywhere() must not ask this CPU"))
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("nor time it"))
    bf16, fp32 = torch.bfloat16, torch.float32
    assert _formats("auto", "auto") == [
        (bf16, "int4", "fp32"),  # AMX; AVX512-BF16 where the AVX2 kernel cannot serve
        (fp32, "int4", "int8"),  # elsewhere, the AVX2 kernel serving
        (fp32, "fp16", "fp32"),  # where the AVX2 kernel cannot serve
    ]
    assert _formats("auto", "auto", "fp32") == [(bf16, "int4", "fp32"), (fp32, "int4", "fp32"), (fp32, "fp16", "fp32")]
    assert _formats("auto", "int4") == [(bf16, "int4", "fp32"), (fp32, "int4", "int8")]
    assert _formats("auto", "int8") == [(bf16, "int8", "fp32")]  # refused under fp32, so bf16 everywhere
    assert _formats("auto", "dense") == [(bf16, "dense", "fp32"), (fp32, "dense", "fp32")]
    # A pinned format is that format on every CPU (bf16 emulated where it must be).
    assert _formats("bf16", "auto") == [(bf16, "int4", "fp32")]
    assert _formats("fp32", "int4") == [(fp32, "int4", "int8")]
    assert _formats("fp32", "auto") == [(fp32, "dense", "fp32")]
    assert _formats("fp32", "fp16", "int8") == []  # int8 activations exist only for int4 weights
    monkeypatch.setattr(precision, "fbgemm_available", lambda: False)  # a torch build without it
    assert _formats("auto", "auto") == [(bf16, "int4", "fp32"), (fp32, "dense", "fp32")]


def test_anywhere_agrees_with_choose_on_this_cpu() -> None:
    """Whatever this machine picks is among the formats listed for every machine."""
    chosen = precision.choose("auto", "auto", lambda: (True, "probe"))
    acts = precision.activations("auto", chosen)
    assert (chosen.dtype, chosen.weights.value, acts) in _formats("auto", "auto")
