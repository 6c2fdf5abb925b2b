"""Sentiment prompt helpers: per-script calibration and the user template."""

from __future__ import annotations

import dataclasses

from inference_svc.core.prompts import CHAT_SYSTEM_PROMPT, SENTIMENT, SentimentPrompt, is_mostly_cjk, revision
from reprise.domain import Label


def test_script_detection() -> None:
    assert is_mostly_cjk("这家餐厅的菜太难吃了")
    assert is_mostly_cjk("iPhone 的电池很耐用")
    assert not is_mostly_cjk("The battery lasts all day 好")
    assert not is_mostly_cjk("1234 !!!")


def test_bias_is_chosen_by_script() -> None:
    spec = SentimentPrompt("s", bias=0.5, bias_cjk=-0.25)
    assert spec.bias_for("great flight") == 0.5
    assert spec.bias_for("很好的酒店") == -0.25
    assert SentimentPrompt("s", bias=0.5).bias_for("很好的酒店") == 0.5


def test_user_template_and_answers() -> None:
    spec = SentimentPrompt("s", user_template="Text: {text}\nLabel?")
    assert spec.user("hi {x}") == "Text: hi {x}\nLabel?"
    assert spec.answer(Label.NEGATIVE) == "Negative"
    assert all(label in (Label.POSITIVE, Label.NEGATIVE) for _, label in SENTIMENT.examples)


def test_prompts_revision_follows_every_part_that_changes_answers() -> None:
    base = revision(SENTIMENT, CHAT_SYSTEM_PROMPT)
    assert len(base) == 12 and int(base, 16) >= 0
    assert revision(SENTIMENT, CHAT_SYSTEM_PROMPT) == base  # stable across calls (and processes: no hash())
    (text, label), *rest = SENTIMENT.examples
    flipped = (text, Label.NEGATIVE if label is Label.POSITIVE else Label.POSITIVE)
    changed = [
        revision(SENTIMENT, CHAT_SYSTEM_PROMPT + " "),
        revision(dataclasses.replace(SENTIMENT, bias=SENTIMENT.bias + 0.01), CHAT_SYSTEM_PROMPT),
        revision(dataclasses.replace(SENTIMENT, bias_cjk=None), CHAT_SYSTEM_PROMPT),
        revision(dataclasses.replace(SENTIMENT, examples=(flipped, *rest)), CHAT_SYSTEM_PROMPT),
        revision(dataclasses.replace(SENTIMENT, user_template="{text}"), CHAT_SYSTEM_PROMPT),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_prompts_revision_follows_the_scoring_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_svc.core import prompts

    base = revision(SENTIMENT, CHAT_SYSTEM_PROMPT)
    monkeypatch.setattr(prompts, "SCORING_VERSION", prompts.SCORING_VERSION + 1)
    assert revision(SENTIMENT, CHAT_SYSTEM_PROMPT) != base
