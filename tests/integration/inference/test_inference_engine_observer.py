"""The engine reports classify passes, prompt tokens, prefix lookups and replies through the Observer it is given."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from inference_svc.core.engine import Classification, Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from reprise.domain import Decoding

from tests.support.observer import RecordingObserver


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, RecordingObserver]:
    seen = RecordingObserver()
    e = Engine(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"), max_new_tokens=8), seen)
    e.load()
    e.warm_up()
    return e, seen


def test_a_classify_batch_reports_its_pass_and_each_distinct_texts_prompt(engine: tuple[Engine, RecordingObserver]) -> None:
    e, seen = engine
    seen.events.clear()
    results = e.classify_batch(["good", "bad", "good"])
    assert seen.calls("classify_pass") == [(2,)]  # one pass, duplicates run once
    usages = {(r.usage.prompt_tokens, r.usage.cached_tokens) for r in results if isinstance(r, Classification)}
    assert set(seen.calls("prompt")) == usages and len(seen.calls("prompt")) == 2


def test_a_chat_reports_its_lookup_prefill_reply_and_the_kv_it_keeps(engine: tuple[Engine, RecordingObserver]) -> None:
    e, seen = engine
    seen.events.clear()
    chunks = list(e.chat(ChatRequest("hello there", decoding=Decoding(max_new_tokens=4, seed=1)), threading.Event()))
    usage = chunks[-1].usage
    assert usage is not None
    assert seen.calls("prefix_lookup") == [(True,)]  # the default system prompt's KV is pinned at warm-up
    assert seen.calls("prompt") == [(usage.prompt_tokens, usage.cached_tokens)]
    [(ttft,)] = seen.calls("first_token")
    assert ttft == pytest.approx(chunks[-1].prefill_ms / 1000)
    assert seen.calls("generated") == [(usage.completion_tokens,)]
    assert len(seen.calls("decode_speed")) == (usage.completion_tokens > 1)  # a speed needs two tokens
    assert seen.calls("kv_index")[-1] == (e.index.stats().entries, e.index.stats().bytes)
