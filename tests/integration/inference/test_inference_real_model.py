"""The default model in its serving format (slow: needs `make model`)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from reprise.domain import Decoding, Label, Role, Turn

from tests.support.cpu import int8_kernel_name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def engine() -> Engine:
    e = Engine(EngineConfig(cache_dir=ROOT / ".models", max_new_tokens=48))
    e.load()
    e.warm_up()
    return e


def test_obvious_sentiment_in_both_languages(engine: Engine) -> None:
    cases = {
        "I love this phone, the battery lasts all day!": Label.POSITIVE,
        "The flight was cancelled and nobody helped us. Terrible.": Label.NEGATIVE,
        "这家餐厅的菜非常好吃，服务也很周到。": Label.POSITIVE,
        "房间又脏又吵，再也不会住了。": Label.NEGATIVE,
    }
    results = engine.classify_batch(list(cases))
    assert [r.result.label for r in results] == list(cases.values())


def test_five_turn_conversation_reuse_equals_recompute(engine: Engine) -> None:
    history: tuple[Turn, ...] = ()
    questions = ["What is a hash map?", "How does it handle collisions?", "And in Python?", "Give an example.", "Thanks! Summarize."]
    for question in questions:
        chat = ChatRequest(question, history, decoding=Decoding(max_new_tokens=32))
        reused = list(engine.chat(chat, threading.Event()))
        engine.index.clear()
        fresh = list(engine.chat(chat, threading.Event()))
        reply = "".join(c.delta for c in reused)
        assert reply == "".join(c.delta for c in fresh)
        if history:
            assert reused[-1].usage.cached_tokens > fresh[-1].usage.cached_tokens
        history += (Turn(Role.USER, question), Turn(Role.ASSISTANT, reply))


def test_lm_head_shortlist_picks_the_exact_int8_argmax(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy decoding through the int4 shortlist equals the argmax of the full int8 head in fp32, every step."""
    model = engine.model
    head = model.head
    if not head.has_int4:  # the fp16 format (fbgemm) keeps the int8 head alone
        assert (engine.describe().dtype, engine.describe().weights) == ("float32", "fp16")
        return
    rows = head.q8.float() * head.s8.float()[:, None]
    served = model.logits
    steps: list[bool] = []

    def checked(hidden: torch.Tensor) -> torch.Tensor:
        out = served(hidden)
        steps.extend((out.argmax(-1) == (hidden.float() @ rows.t()).argmax(-1)).tolist())
        return out

    monkeypatch.setattr(model, "logits", checked)
    for prompt in ("Explain what a hash map is.", "缓存是什么？", "List three uses of Redis."):
        list(engine.chat(ChatRequest(prompt, decoding=Decoding(max_new_tokens=32)), threading.Event(), remember=False))
    assert len(steps) >= 60 and all(steps)


def test_decode_rows_use_the_native_int4_kernel_where_it_runs(engine: Engine) -> None:
    from inference_svc.runtime.native import int4_gemv

    if engine.describe().weights != "int4":
        assert engine.describe().int4_kernel == ""
        return
    kernel = engine.describe().int4_kernel
    if engine.describe().dtype == "float32":  # only ever with Reprise's AVX2 kernel, int8 activations by default
        assert kernel == int8_kernel_name()
        layers = [x for l in engine.model.layers for x in l.linears] + [engine.model.head]
        assert all(x.native is not None and x.kernel is not None for x in layers)
        assert engine.model.step_plan is not None and engine.model.step_plan.rows_exact  # prompts take the step
        return
    if int4_gemv.load(ROOT / ".models" / "native")[0] is None:
        assert kernel == "torch"
    else:
        assert kernel in ("reprise-avx512bf16", "torch")  # torch's where it won the start-up race here
    layers = [x for l in engine.model.layers for x in l.linears] + [engine.model.head]
    assert all((x.native is not None) == (kernel == "reprise-avx512bf16") for x in layers)


def test_decode_steps_run_in_c_and_in_one_call_where_every_layer_is_reprise_int4(engine: Engine) -> None:
    """The packaged model takes the fused decode path (the suite has a compiler), whole-step where its layers allow."""
    from inference_svc.runtime.native import int4_gemv
    from inference_svc.runtime.native.decode_ops import DECODE_OPS_NAME

    info = engine.describe()
    assert info.decode_ops == DECODE_OPS_NAME and engine.model.ops is not None
    whole_step = info.weights == "int4" and (info.int4_kernel == int4_gemv.NAME or info.int4_kernel.startswith(int4_gemv.F32_NAME))
    assert (engine.model.step_plan is not None) == whole_step
