"""Sentiment prompt helpers: per-script calibration and the user template."""

from __future__ import annotations

from inference_svc.core.prompts import SENTIMENT, SentimentPrompt, is_mostly_cjk
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
