"""The model's generation_config.json decides what a request leaves unset, and which tokens end a reply.

A tiny Qwen2 with a generation config written for each test, served in fp32 through the engine's chat and
compared with transformers' forward plus the same rule: greedy over the logits with the tokens of the
conversation (end-of-turn tokens excepted) penalized.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import torch

from inference_svc.core import prompts
from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from reprise.domain import Decoding, Finish

STEPS = 16
TEXT = "Tell me a joke about cats, then the capital of France."


def _model(tiny_model_dir: Path, target: Path, generation: dict | None) -> Path:
    shutil.copytree(tiny_model_dir, target)
    if generation is not None:
        doc = json.loads((target / "generation_config.json").read_text())
        (target / "generation_config.json").write_text(json.dumps({**doc, **generation}))
    return target


def _engine(model_dir: Path, cache: Path) -> Engine:
    engine = Engine(EngineConfig(model=str(model_dir), cache_dir=cache, max_new_tokens=STEPS, dtype="fp32", weights="dense"))
    engine.load()
    return engine


def _chat(engine: Engine, decoding: Decoding) -> tuple[str, Finish | None]:
    chunks = list(engine.chat(ChatRequest(TEXT, decoding=decoding), threading.Event(), remember=False))
    return "".join(c.delta for c in chunks), chunks[-1].finish


@torch.inference_mode()
def _reference(model_dir: Path, ids: list[int], penalty: float, exempt: set[int]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seq = list(ids)
    for _ in range(STEPS):
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1].clone()
        seen = torch.tensor(sorted(set(seq) - exempt))
        score = logits[seen]
        logits[seen] = torch.where(score > 0, score / penalty, score * penalty)
        seq.append(int(logits.argmax()))
    return seq[len(ids):]


def _until(tokens: list[int], stops: set[int]) -> list[int]:
    return tokens[: next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]


def test_an_unset_repetition_penalty_is_the_generation_configs_and_a_set_one_wins(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = _model(tiny_model_dir, tmp_path / "model", {"repetition_penalty": 1.8, "top_k": 3})
    engine = _engine(model_dir, tmp_path / "cache")
    assert engine.decoding_defaults == Decoding(top_k=3, repetition_penalty=1.8)
    tok = engine.tokenizer
    ids = prompts.chat_prompt(tok, ChatRequest(TEXT), engine.config.chat_system_prompt).ids
    eos = {tok.convert_tokens_to_ids("<|im_end|>")}
    penalized = _until(_reference(model_dir, ids, 1.8, eos), eos)
    plain = _until(_reference(model_dir, ids, 1.0, eos), eos)
    assert penalized != plain, "the penalty must change this reply, or the test tests nothing"
    assert _chat(engine, Decoding())[0] == tok.decode(penalized, skip_special_tokens=True)
    assert _chat(engine, Decoding(repetition_penalty=1.0))[0] == tok.decode(plain, skip_special_tokens=True)


def test_the_defaults_are_part_of_the_models_identity(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = _engine(_model(tiny_model_dir, tmp_path / "a", None), tmp_path / "cache").describe()
    tuned = _engine(_model(tiny_model_dir, tmp_path / "b", {"repetition_penalty": 1.2}), tmp_path / "cache").describe()
    assert tuned.prompts_revision != plain.prompts_revision
    assert tuned.revision != plain.revision  # the file is part of the content revision too
    # A model without decoding defaults keeps the digest it had before defaults existed.
    assert plain.prompts_revision == prompts.revision(prompts.SENTIMENT, prompts.CHAT_SYSTEM_PROMPT)


def test_a_reply_ends_at_any_end_of_turn_token_the_generation_config_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = _engine(_model(tiny_model_dir, tmp_path / "a", None), tmp_path / "cache")
    tok = first.tokenizer
    ids = prompts.chat_prompt(tok, ChatRequest(TEXT), first.config.chat_system_prompt).ids
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    tokens = _until(_reference(tmp_path / "a", ids, 1.0, set()), {im_end})
    # The first token of the reply not seen before it becomes an end-of-turn token of a second model.
    at = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    second = _engine(_model(tiny_model_dir, tmp_path / "b", {"eos_token_id": [im_end, tokens[at]]}), tmp_path / "cache")
    reply, finish = _chat(second, Decoding())
    assert finish is Finish.STOP
    assert reply == tok.decode(tokens[:at], skip_special_tokens=True)
    assert _chat(first, Decoding())[0] == tok.decode(tokens, skip_special_tokens=True)  # the first one goes on


def test_the_chat_templates_turn_end_is_an_end_of_turn_token(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = _engine(_model(tiny_model_dir, tmp_path / "a", None), tmp_path / "cache")
    tok = engine.tokenizer
    assert prompts.turn_end_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.convert_tokens_to_ids("<|im_end|>") in engine._eos
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in engine._eos  # named by no config of this model
