"""Sentiment prompt variants compared by ``python -m bench.inference.sentiment_hard --tune`` (dev split only).

The hard-case turns below were written for the prompt, not taken from any evaluation set:
one or two per phenomenon the served prompt got wrong (negated negatives, negated
positives, contrast in both directions, slang and emoji, light sarcasm), in both languages.
"""

from __future__ import annotations

from inference_svc.core import prompts
from inference_svc.core.prompts import SentimentPrompt
from reprise.domain import Label

P, N = Label.POSITIVE, Label.NEGATIVE

HARD_SHOT: tuple[tuple[str, Label], ...] = (
    ("用了半年了，一点都不卡，没让我失望。", P),
    ("No complaints at all, it just works every single day.", P),
    ("说实话不怎么样，跟宣传的差太多了。", N),
    ("Wouldn't recommend it, honestly. The strap broke in a week.", N),
    ("Pricey, but worth every penny — best headphones I've owned.", P),
    ("虽然包装很漂亮，但是味道真的一般，不会再买了。", N),
    ("这家火锅绝了，yyds！下次还来🔥", P),
    ("Total letdown, tastes mid at best 🤮", N),
)

SARCASM_SHOT: tuple[tuple[str, Label], ...] = (
    ("Oh wonderful, the update deleted all my photos. Thanks a lot.", N),
    ("I'm furious at how addictive this game is, lost a whole weekend to it 😂", P),
    ("真是太“贴心”了，半夜三点给我打推销电话。", N),
    ("气死了，这家店的蛋糕好吃到我又胖了三斤！", P),
)

SYS_RULES = (
    "You are a sentiment classifier. Read the user's text (English or Chinese) and answer with exactly one word: "
    "Positive or Negative, for the writer's overall verdict. A negated complaint is praise (not bad, no complaints, "
    "不难用, 没让我失望); a negated compliment is criticism (not great, 不怎么样). After but / however / 但是 / 不过, "
    "the second part decides. Slang and emoji count: 绝了, yyds, 真香, slaps, fire, 🔥, 😍 are praise; 踩雷, 拔草, "
    "mid, 💩, 🤮 are criticism."
)

base = prompts.SENTIMENT
VARIANTS: dict[str, SentimentPrompt] = {
    "served": SentimentPrompt(base.system, base.examples, user_template=base.user_template),
    "served + hard shots": SentimentPrompt(base.system, base.examples + HARD_SHOT, user_template=base.user_template),
    "rules": SentimentPrompt(SYS_RULES, base.examples, user_template=base.user_template),
    "rules + hard shots": SentimentPrompt(SYS_RULES, base.examples + HARD_SHOT, user_template=base.user_template),
    "served + hard + sarcasm shots": SentimentPrompt(
        base.system, base.examples + HARD_SHOT + SARCASM_SHOT, user_template=base.user_template
    ),
}
