"""What the fast forward accepts (an allow-list of config fields), a local model's content revision, and the
serving format decided from CPU facts alone."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_svc.runtime import model_source, precision
from inference_svc.runtime.architecture import ModelShape, Rope, UnsupportedModel

QWEN2: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 400, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
    "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "initializer_range": 0.02,
}
LLAMA31_ROPE = {
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def _llama(**extra: Any) -> dict[str, Any]:
    base = {**QWEN2, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 131072}
    for qwen_only in ("use_sliding_window", "sliding_window", "max_window_layers"):
        base.pop(qwen_only)
    return {**base, **extra}


def test_a_real_qwen2_config_is_accepted_with_what_it_says() -> None:
    shape = ModelShape.from_config(QWEN2)
    assert (shape.heads, shape.kv_heads, shape.head_dim, shape.rope_theta) == (4, 2, 16, 1e6)
    assert shape.tied and shape.attn_bias and not shape.o_bias and not shape.mlp_bias and not shape.qk_norm
    assert shape.max_positions == 4096  # the sliding window is off: its size does not limit anything


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config"),
        ({"some_new_switch": True}, "some_new_switch"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}}, "rope"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope"),
        ({"model_type": "gemma"}, "model_type"),
        ({"model_type": "phi3"}, "model_type"),
        ({"is_encoder_decoder": True}, "is_encoder_decoder"),
    ],
)
def test_any_field_the_forward_does_not_implement_refuses_naming_it(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(UnsupportedModel, match=field):
        ModelShape.from_config({**QWEN2, **extra})


def test_fields_at_their_defaults_or_harmless_are_accepted() -> None:
    ModelShape.from_config({**QWEN2, "output_attentions": False, "pad_token_id": 3, "id2label": {"0": "A"}})
    ModelShape.from_config(_llama(pretraining_tp=2))  # the same products in another order


def test_llama_biases_and_rope_scaling_are_read_from_the_config() -> None:
    shape = ModelShape.from_config(_llama(attention_bias=True, mlp_bias=True, rope_scaling=LLAMA31_ROPE, rope_theta=5e5))
    assert shape.attn_bias and shape.o_bias and shape.mlp_bias and shape.tied
    assert shape.rope is not None and shape.rope.kind == "llama3" and shape.rope_theta == 5e5
    plain = ModelShape.from_config(_llama())
    assert not (plain.attn_bias or plain.o_bias or plain.mlp_bias)


def test_qwen3_has_head_norms_and_its_own_head_dim() -> None:
    shape = ModelShape.from_config({**QWEN2, "model_type": "qwen3", "head_dim": 32, "attention_bias": False})
    assert shape.qk_norm and shape.head_dim == 32 and not shape.attn_bias


def test_a_sliding_window_limits_the_context_to_it_where_it_is_exact() -> None:
    """Within its window, sliding-window attention sees every earlier token: served exactly up to the window."""
    shape = ModelShape.from_config({**QWEN2, "use_sliding_window": True, "sliding_window": 1024, "max_window_layers": 1})
    assert shape.max_positions == 1024
    mistral = {**_llama(), "model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768}
    assert ModelShape.from_config(mistral).max_positions == 4096
    assert ModelShape.from_config({**mistral, "sliding_window": None}).max_positions == 32768


@pytest.mark.parametrize(
    "params",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
        {**LLAMA31_ROPE, "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    ],
)
def test_rope_frequencies_are_transformers_own(params: dict[str, Any]) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=4096, rope_parameters=params)
    kind = params["rope_type"]
    if kind == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[kind](config, None)
    ours = Rope.from_parameters(params, 10000.0).inv_freq(16)
    torch.testing.assert_close(ours.float(), expected.float(), rtol=1e-6, atol=0)
    if kind != "default":  # the scaling moved something, so the comparison tests it
        assert not torch.allclose(ours, Rope(params["rope_theta"]).inv_freq(16))


# -- identity ---------------------------------------------------------------


def _model_dir(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer.json").write_text("{}")
    (path / "README.md").write_text("not part of the model")
    return path


def test_two_directories_with_other_weights_never_share_a_revision(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = model_source.resolve(str(_model_dir(tmp_path / "a", b"\x01" * 4096)), cache)
    b = model_source.resolve(str(_model_dir(tmp_path / "b", b"\x02" * 4096)), cache)  # same names, sizes, config
    c = model_source.resolve(str(_model_dir(tmp_path / "c", b"\x01" * 4096)), cache)  # a copy of a
    assert a.revision != b.revision and a.revision == c.revision
    (tmp_path / "c" / "README.md").write_text("edited")
    assert model_source.resolve(str(tmp_path / "c"), cache).revision == a.revision  # not a model file
    (tmp_path / "c" / "tokenizer.json").write_text('{"x": 1}')  # the tokenizer changes answers too
    assert model_source.resolve(str(tmp_path / "c"), cache).revision != a.revision


def test_the_revision_is_hashed_once_and_again_only_when_a_file_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    model = _model_dir(tmp_path / "m", b"\x01" * 4096)
    with caplog.at_level(logging.INFO, logger=model_source.__name__):
        first = model_source.resolve(str(model), cache).revision
        assert sum("hashed" in r.getMessage() for r in caplog.records) == 1
        assert model_source.resolve(str(model), cache).revision == first  # from the record
        assert sum("hashed" in r.getMessage() for r in caplog.records) == 1
        weights = model / "model.safetensors"
        stat = weights.stat()
        weights.write_bytes(b"\x03" * 4096)  # rewritten in place, same size
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        assert model_source.resolve(str(model), cache).revision != first
        assert sum("hashed" in r.getMessage() for r in caplog.records) == 2


def test_a_gguf_keeps_its_sha256_as_revision(tmp_path: Path) -> None:
    import hashlib

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 1000)
    source = model_source.resolve(str(gguf), tmp_path / "cache")
    assert source.revision == hashlib.sha256(gguf.read_bytes()).hexdigest()[:16]


def test_a_read_only_cache_only_costs_rehashing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        model = _model_dir(tmp_path / "m", b"\x01" * 64)
        assert model_source.resolve(str(model), cache).revision == model_source.resolve(str(model), cache).revision
    finally:
        cache.chmod(0o700)


# -- the serving format -------------------------------------------------------


def test_dtype_auto_is_a_function_of_the_cpu_facts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("a start never times"))
    for facts in (
        precision.CpuFacts(True, (True, "")),
        precision.CpuFacts(True, (True, ""), amx=True),
        precision.CpuFacts(False, (True, "kernel builds")),
        precision.CpuFacts(False, (False, "no compiler")),
    ):
        answers = {(p.dtype, p.weights, p.reason) for p in (precision.decide("auto", "auto", facts) for _ in range(5))}
        assert len(answers) == 1
    assert precision.decide("auto", "auto", precision.CpuFacts(True)).dtype == torch.bfloat16
    assert precision.decide("auto", "auto", precision.CpuFacts(True, (True, ""), amx=True)).dtype == torch.bfloat16
    assert precision.decide("auto", "auto", precision.CpuFacts(True, (True, ""))).weights.value == "int4"
    assert precision.decide("auto", "auto", precision.CpuFacts(True, (True, ""))).dtype == torch.float32
    assert precision.decide("auto", "auto", precision.CpuFacts(False, (True, ""))).weights.value == "int4"
    assert precision.decide("auto", "auto", precision.CpuFacts(False, (False, ""))).weights.value == "fp16"


def test_five_starts_of_dtype_auto_on_this_machine_choose_one_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("a start never times"))
    chosen = {precision.choose("auto", "auto", lambda: (True, "probe")) for _ in range(5)}
    assert len(chosen) == 1
