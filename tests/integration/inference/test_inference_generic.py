"""The generic path: a causal LM the fast forward does not implement is served through transformers' own model,
with chat, prefix KV reuse and classify working as on the fast path; what it cannot serve exactly is refused."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_svc.core import prompts
from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from inference_svc.runtime import generic
from inference_svc.runtime.architecture import UnsupportedModel
from inference_svc.runtime.model_source import ModelSourceError
from reprise.domain import Decoding, Role, Turn

from tests.support.tiny_model import build_tiny_causal_lm

PROMPT = "Tell me a joke about cats, then the capital of France."
STEPS = 16
#: Architectures only the generic path serves (Gemma: scaled embedding, (1 + w) norms, GELU; Phi-3: fused
#: projections; Gemma 3: sliding-window layers, whose KV is recomputed rather than cut).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma": ("gemma", {}),
    "phi3": ("phi3", {"tie_word_embeddings": False}),
    "gemma3": ("gemma3_text", {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generic")
    return {name: build_tiny_causal_lm(root / name, kind, **config) for name, (kind, config) in MODELS.items()}


def _engine(model_dir: Path, cache: Path, **kwargs: Any) -> Engine:
    engine = Engine(EngineConfig(model=str(model_dir), cache_dir=cache, max_new_tokens=STEPS, **kwargs))
    engine.load()
    return engine


def _reply(engine: Engine, history: tuple[Turn, ...], text: str) -> tuple[str, Any]:
    chunks = list(engine.chat(ChatRequest(text, history, decoding=Decoding(max_new_tokens=STEPS)), threading.Event()))
    return "".join(c.delta for c in chunks), chunks[-1].usage


@torch.inference_mode()
def _reference_reply(engine: Engine, history: tuple[Turn, ...], text: str) -> str:
    """transformers' greedy reply to the same prompt, recomputed from scratch every token, cut at end of turn."""
    hf = engine.model.hf
    seq = prompts.chat_prompt(engine.tokenizer, ChatRequest(text, history), engine.config.chat_system_prompt).ids
    out: list[int] = []
    for _ in range(STEPS):
        token = int(hf(input_ids=torch.tensor([seq + out])).logits[0, -1].argmax())
        if token in engine._eos:
            break
        out.append(token)
    return engine.tokenizer.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_generic_path_answers_what_transformers_answers_with_kv_reuse(
    name: str, built: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        engine = _engine(built[name], tmp_path)
    assert engine.loaded is not None and engine.loaded.decode_ops == generic.RUNTIME
    assert any("through transformers" in r.getMessage() and "slower" in r.getMessage() for r in caplog.records)
    assert engine.describe().revision.startswith(engine.loaded.source.revision + ".")
    assert engine.model.croppable == (name != "gemma3")  # Gemma 3's sliding layers: reused prefixes recomputed
    engine.warm_up()
    history: tuple[Turn, ...] = ()
    for question in (PROMPT, "another one", "and one about dogs"):
        reply, usage = _reply(engine, history, question)
        assert reply == _reference_reply(engine, history, question)
        assert usage.cached_tokens > 0  # the pinned system prompt, then the previous turns
        engine.index.clear()
        assert _reply(engine, history, question)[0] == reply  # recomputed from scratch: the same
        history += (Turn(Role.USER, question), Turn(Role.ASSISTANT, reply or "x"))


@torch.inference_mode()
def test_classify_on_the_generic_path_is_the_label_softmax_of_the_full_prompt(built: dict[str, Path], tmp_path: Path) -> None:
    engine = _engine(built["gemma"], tmp_path)
    tok, spec = engine.tokenizer, engine.config.sentiment
    texts = ["I love this phone", "服务太差了，我不喜欢", "ok"]
    for text, result in zip(texts, engine.classify_batch(texts)):
        messages = [{"role": "system", "content": spec.system}]
        for example, label in spec.examples:
            messages += [{"role": "user", "content": spec.user(example)}, {"role": "assistant", "content": spec.answer(label)}]
        messages.append({"role": "user", "content": spec.user(text)})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        logits = engine.model.hf(input_ids=torch.tensor([ids])).logits[0, -1]
        pos, neg = (tok.encode(w, add_special_tokens=False)[0] for w in ("Positive", "Negative"))
        p_pos = torch.sigmoid(logits[pos] - logits[neg] - spec.bias_for(text)).item()
        assert result.p_positive == pytest.approx(p_pos, abs=1e-4)


def test_no_generic_refuses_naming_the_model_type(built: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="model_type='gemma'"):
        _engine(built["gemma"], tmp_path, generic=False)


def test_what_the_generic_path_cannot_serve_exactly_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    # Gemma 2 softcaps its logits: label rows read from the LM head would not be its scores.
    gemma2 = build_tiny_causal_lm(tmp_path / "gemma2", "gemma2")
    with pytest.raises(UnsupportedModel, match="softcapped or scaled"):
        _engine(gemma2, tmp_path / "cache")
    # A config that does not describe its weights: transformers would fill the gap with random ones.
    wrong = tmp_path / "wrong"
    shutil.copytree(built["phi3"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ModelSourceError, match="does not match its config.*missing"):
        _engine(wrong, tmp_path / "cache")


def test_prepare_converts_nothing_for_a_model_the_generic_path_serves(built: dict[str, Path], tmp_path: Path) -> None:
    from inference_svc import prepare
    from inference_svc.runtime import model_source

    config = EngineConfig(model=str(built["phi3"]), cache_dir=tmp_path)
    prepare.prepare_all_formats(config, model_source.resolve(config.model, tmp_path))
    assert not (tmp_path / "converted").exists()
    with pytest.raises(UnsupportedModel, match="phi3"):
        prepare.prepare_all_formats(
            EngineConfig(model=config.model, cache_dir=tmp_path, generic=False), model_source.resolve(config.model, tmp_path)
        )

