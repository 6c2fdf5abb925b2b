"""Every architecture the fast forward accepts answers what transformers answers; anything else is refused at start.

Tiny random models built from configs in code (tests/support/tiny_model.py), served in fp32 (dense weights),
against transformers' own model on the same directory: greedy token for token, prompts in two chunks then one
token at a time (the decode step's fused C path), and through the engine's chat.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference_svc.core import prompts
from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from inference_svc.runtime import loader, precision
from inference_svc.runtime.architecture import UnsupportedModel
from reprise.domain import Decoding

from tests.support.tiny_model import build_tiny_causal_lm

LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    # Far below the tiny model's context, so the scaling moves most frequencies (as 8192 does for a real one).
    "original_max_position_embeddings": 64,
}

#: name: (model_type, config overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen2-untied": ("qwen2", {"tie_word_embeddings": False}),
    "llama-bias-llama3-rope": (
        "llama", {"attention_bias": True, "mlp_bias": True, "rope_parameters": {"rope_theta": 500000.0, **LLAMA3_ROPE}},
    ),
    "qwen3": ("qwen3", {"tie_word_embeddings": True}),
    "qwen3-wide-heads": ("qwen3", {"head_dim": 32, "tie_word_embeddings": False}),
    "mistral": ("mistral", {"sliding_window": None}),
}

PROMPT = "Tell me a joke about cats, then the capital of France. 这个手机很好用"
STEPS = 24


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {name: build_tiny_causal_lm(root / name, kind, **config) for name, (kind, config) in MODELS.items()}


def _engine(model_dir: Path, cache: Path, **kwargs: Any) -> Engine:
    engine = Engine(EngineConfig(model=str(model_dir), cache_dir=cache, max_new_tokens=STEPS, **kwargs))
    engine.load()
    return engine


def _reference(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.inference_mode()
def _greedy_reference(model, ids: list[int], steps: int) -> list[int]:  # type: ignore[no-untyped-def]
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


@torch.inference_mode()
def _greedy_runtime(engine: Engine, ids: list[int], steps: int) -> list[int]:
    model = engine.model
    kv = model.new_kv(len(ids) + steps)
    model.forward(torch.tensor(ids[:-7]), kv)  # a chunk, another, then one token at a time
    hidden = model.forward(torch.tensor(ids[-7:]), kv)
    out: list[int] = []
    for _ in range(steps):
        out.append(int(model.logits(hidden)[0].argmax()))
        hidden = model.forward(torch.tensor(out[-1:]), kv)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_output_matches_transformers_token_for_token(name: str, built: dict[str, Path], tmp_path: Path) -> None:
    engine = _engine(built[name], tmp_path, dtype="fp32")
    reference = _reference(built[name])
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=False)
    expected = _greedy_reference(reference, list(ids), STEPS)
    assert len(set(expected)) > 3, "a degenerate reference would not test much"
    assert _greedy_runtime(engine, list(ids), STEPS) == expected
    # The engine's chat: the same tokens, stopped where transformers' generate stops.
    chunks = list(engine.chat(ChatRequest(PROMPT, decoding=Decoding(max_new_tokens=STEPS)), threading.Event(), remember=False))
    reply = "".join(c.delta for c in chunks)
    prompt = prompts.chat_prompt(engine.tokenizer, ChatRequest(PROMPT), engine.config.chat_system_prompt).ids
    generated = _greedy_reference(reference, prompt, STEPS)
    # Where transformers' generate stops: its generation config's end-of-sequence ids (here <|im_end|> alone,
    # so a reply goes on past an <|endoftext|>, as the engine's does).
    eos_ids = reference.generation_config.eos_token_id
    eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    stop = next((i for i, t in enumerate(generated) if t in eos), len(generated))
    assert reply == engine.tokenizer.decode(generated[:stop], skip_special_tokens=True)
    # Sentiment reads the LM head's rows: the same logits as transformers for the label tokens.
    assert 0.0 <= engine.classify_batch(["I love this phone"])[0].p_positive <= 1.0


def test_an_untied_model_keeps_its_own_embedding(built: dict[str, Path], tmp_path: Path) -> None:
    untied = _engine(built["qwen2-untied"], tmp_path / "a", dtype="fp32")
    assert untied.model.embed is not untied.model.head and "tied" not in untied.loaded.spec.name
    tied = _engine(built["qwen2-tied"], tmp_path / "b", dtype="fp32")
    assert tied.model.embed is tied.model.head and "tied" in tied.loaded.spec.name
    # Where it counts: an untied head and embedding differ, and the embedding served is the checkpoint's.
    state = load_file(built["qwen2-untied"] / "model.safetensors")
    assert not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    torch.testing.assert_close(untied.model.embed.rows([5, 7]).float(), state["model.embed_tokens.weight"][[5, 7]])


def _last_logits(engine: Engine, ids: list[int], split: int | None = None) -> torch.Tensor:
    """Logits after ``ids``: one prefill pass, or ``ids[:split]`` then the rest one token at a time (decode steps)."""
    model = engine.model
    kv = model.new_kv(len(ids))
    hidden = model.forward(torch.tensor(ids[:split]), kv)
    for token in ids[split:] if split is not None else ():
        hidden = model.forward(torch.tensor([token]), kv)
    return model.logits(hidden)[0]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1].item()


@torch.inference_mode()
@pytest.mark.parametrize("name", ["llama-bias-llama3-rope", "qwen3-wide-heads"])
def test_every_format_serves_the_new_architectures(name: str, built: dict[str, Path], tmp_path: Path) -> None:
    """Biases, head norms and scaled RoPE in every format: near-exact ones (fp16 weights, bf16) follow fp32; the
    int4 one (what auto serves) follows it as closely as on Qwen2 (tiny wide random weights quantize coarsely:
    0.87 there); each computes the same from a prefill pass as from decode steps (reused KV == recomputed)."""
    fp32 = _engine(built[name], tmp_path, dtype="fp32")
    ids = fp32._encode(PROMPT)
    exact = _last_logits(fp32, ids)
    for kwargs, least in ((dict(dtype="fp32", weights="fp16"), 0.99), (dict(dtype="bf16", weights="dense"), 0.99),
                          (dict(dtype="auto"), 0.7), (dict(dtype="bf16", weights="int4"), 0.7)):
        engine = _engine(built[name], tmp_path, **kwargs)
        whole = _last_logits(engine, ids)
        assert _corr(whole, exact) > least, kwargs
        assert _corr(_last_logits(engine, ids, split=len(ids) - 5), whole) > 0.999, kwargs


def _with_config(source: Path, target: Path, **changes: Any) -> Path:
    import shutil

    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_an_unsupported_field_refuses_at_start_naming_it_before_any_format_is_chosen(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "choose", lambda *a, **k: pytest.fail("refused before the format is chosen"))
    for field, value in (
        ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 512}),
        ("quantization_config", {"quant_method": "awq", "bits": 4}),
        ("hidden_act", "gelu_pytorch_tanh"),
        ("model_type", "gemma"),
    ):
        model = _with_config(built["qwen2-tied"], tmp_path / field, **{field: value})
        with pytest.raises(UnsupportedModel, match=field.split("_")[0]):
            _engine(model, tmp_path / "cache", generic=False)  # --no-generic (else transformers' own model serves)
    assert not (tmp_path / "cache" / "converted").exists()  # nothing converted either


def test_a_tensor_the_forward_would_not_read_refuses_the_model_naming_it(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config that hides a part of the model (here Llama biases with mlp_bias false: transformers would drop
    them) must not serve either way in silence; nor a tensor of another architecture."""
    model = _with_config(built["llama-bias-llama3-rope"], tmp_path / "hidden-bias", mlp_bias=False)
    monkeypatch.setattr(precision, "choose", lambda *a, **k: pytest.fail("refused before the format is chosen"))
    with pytest.raises(loader.UnusedWeights, match="mlp.down_proj.bias"):
        _engine(model, tmp_path / "cache", dtype="fp32")
    extra = _with_config(built["qwen2-tied"], tmp_path / "extra")
    state = load_file(extra / "model.safetensors")
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(state, str(extra / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(loader.UnusedWeights, match="q_norm"):
        _engine(extra, tmp_path / "cache", dtype="fp32")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(extra / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(loader.model_source.ModelSourceError, match="lacks .*layers.1.mlp.up_proj.weight"):
        _engine(extra, tmp_path / "cache", dtype="fp32")


def test_the_reported_revision_follows_the_weights_and_the_serving_format(built: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = build_tiny_causal_lm(tmp_path / "a", "qwen2", seed=1, tie_word_embeddings=True)
    b = build_tiny_causal_lm(tmp_path / "b", "qwen2", seed=2, tie_word_embeddings=True)
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    first, other = _engine(a, cache, dtype="fp32"), _engine(b, cache, dtype="fp32")
    assert first.describe().revision != other.describe().revision
    assert first.loaded.converted and other.loaded.converted  # b did not load a's converted copy
    again = _engine(a, cache, dtype="fp32")
    assert again.describe().revision == first.describe().revision and not again.loaded.converted
    fp16 = _engine(a, cache, dtype="fp32", weights="fp16")
    weights_rev = first.loaded.source.revision
    assert fp16.describe().revision.startswith(weights_rev) and fp16.describe().revision != first.describe().revision
    # dtype auto, started again and again on this machine: one format, one identity.
    assert len({_engine(a, cache, dtype="auto").describe().revision for _ in range(3)}) == 1
