"""The chat benchmark's automatic rubric (bench/inference/chat_quality.py) flags what it says it flags."""

from __future__ import annotations

import json

from bench import results_io
from bench.inference.chat_quality import (
    BEFORE_PROMPT,
    HELDOUT,
    WRITING_KINDS,
    heldout_line,
    judge,
    load_messages,
    loop_share,
    totals,
)
from reprise.domain import Finish


def _m(text: str = "写一段关于秋天的短文。", kind: str = "writing", expect: str = "zh") -> dict:
    return {"text": text, "kind": kind, "expect_lang": expect}


def test_the_issues_greedy_loop_is_a_loop_and_plain_prose_is_not() -> None:
    looped = "秋天，是秋天的季节，是秋天的美丽，是秋天的丰收，是秋天的季节，是秋天的美丽，是秋天的丰收，是秋天的季节，是秋天的美丽。"
    assert "loop" in judge(_m(), looped, Finish.LENGTH, BEFORE_PROMPT)["failed"]
    prose = "秋天来了，树叶慢慢变黄，随风飘落。田野里稻谷成熟，农民们忙着收割。天空高远，空气清爽，傍晚的夕阳把山坡染成金色。"
    assert judge(_m(), prose, Finish.STOP, BEFORE_PROMPT) == {"failed": [], "score": 2, "loop_share": loop_share(prose), "reply_lang": "zh"}
    english = "Autumn arrives quietly. Leaves turn gold and red, the air smells of woodsmoke, and evenings draw in early."
    assert judge(_m("Write about autumn.", expect="en"), english, Finish.STOP, BEFORE_PROMPT)["score"] == 2
    assert "loop" in judge(_m(expect="en"), "I am here to help you. " * 6, Finish.STOP, BEFORE_PROMPT)["failed"]


def test_refusals_deflections_echoes_language_and_length_are_flagged() -> None:
    def failed(reply: str, finish: Finish = Finish.STOP, **kw: str) -> list[str]:
        return judge(_m(**kw), reply, finish, BEFORE_PROMPT)["failed"]

    assert failed("抱歉，我无法帮你写这段文字。") == ["refusal"]
    assert failed("I'm sorry, but I can't help with that.", text="Write a toast.", expect="en") == ["refusal"]
    assert failed("Here are some tips for writing a review: be specific.", text="Write a review.", expect="en") == ["deflected"]
    assert failed(BEFORE_PROMPT, text="Write a toast.", expect="en") == ["echo"]
    assert failed("写一段关于秋天的短文。") == ["echo"]  # the message itself
    assert failed("好的，下面是一段关于秋天的短文：秋天来了，树叶变黄，稻谷成熟，天空高远，空气清爽。") == []  # restated, then written
    assert failed("You should ask the owner to cook faster.", text="Write an apology.", expect="en", kind="customer_reply") == ["deflected"]
    assert failed("Autumn is the season of harvest and falling leaves.") == ["language"]
    assert failed("秋天很美，天高云淡。", Finish.LENGTH) == ["length"]
    assert judge(_m(), "秋天很美，天高云淡。", Finish.LENGTH, BEFORE_PROMPT)["score"] == 1
    assert failed("   ") == ["empty"]


def test_code_does_not_decide_the_reply_language() -> None:
    reply = "可以这样写：\n```python\ndef is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n```\n这个函数检查n是否为质数。"
    assert judge(_m("用Python写一个函数判断质数。", kind="coding"), reply, Finish.STOP, BEFORE_PROMPT)["failed"] == []


def test_the_message_set_is_forty_zh_and_en_messages() -> None:
    messages = load_messages()
    assert len(messages) == 40 and len({m["id"] for m in messages}) == 40
    assert sum(m["lang"] == "zh" for m in messages) == 20
    assert {m["expect_lang"] for m in messages} == {"zh", "en"}


def test_the_heldout_set_is_24_new_messages_half_of_them_writing_and_customer_replies() -> None:
    heldout, tuning = load_messages(HELDOUT), load_messages()
    assert len(heldout) == 24 and len({m["id"] for m in heldout}) == 24
    assert not {m["id"] for m in heldout} & {m["id"] for m in tuning}
    assert not {m["text"] for m in heldout} & {m["text"] for m in tuning}
    assert sum(m["lang"] == "zh" for m in heldout) == 12
    assert sum(m["kind"] in WRITING_KINDS for m in heldout) == 12


def test_the_doc_block_quotes_the_heldout_totals_of_the_same_cpu_kind(tmp_path, monkeypatch) -> None:
    row = {"id": "x", "lang": "en", "kind": "writing", "failed": ["refusal"], "score": 0}
    configs = {"after": {"totals": totals([row])}}
    run = {"cpu_kind": "amd-epyc-zen4", "messages": 1, "date": "2026-12-07 19:27", "prompts_revision": "abc", "configs": configs}
    (tmp_path / "chat-quality-heldout-amd-epyc-zen4.json").write_text(json.dumps(run))
    monkeypatch.setattr(results_io, "RESULTS", tmp_path)
    monkeypatch.setattr(results_io, "currents", lambda bench, out=tmp_path, f=results_io.currents: f(bench, out))
    assert "after 0/2 (refusal 1)" in heldout_line("amd-epyc-zen4")
    assert heldout_line("intel-xeon") == ""
