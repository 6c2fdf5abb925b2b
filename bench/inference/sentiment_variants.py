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

#: The prompt served before issue 23's second round (prompts revision 615c38988712 with the chat prompt of then):
#: kept verbatim so bench-sentiment scores old and new in one run.
PREVIOUS = SentimentPrompt(
    system=(
        "You are a sentiment classifier. Read the user's text (English or Chinese) and answer with "
        "exactly one word: Positive or Negative."
    ),
    examples=prompts.FEW_SHOT,
    user_template="Is the sentiment of this text Positive or Negative?\n\n{text}",
    bias=0.757,
    bias_cjk=0.6975,
)
base = PREVIOUS
VARIANTS: dict[str, SentimentPrompt] = {
    "previous": SentimentPrompt(base.system, base.examples, user_template=base.user_template),
    "previous + hard shots": SentimentPrompt(base.system, base.examples + HARD_SHOT, user_template=base.user_template),
    "rules": SentimentPrompt(SYS_RULES, base.examples, user_template=base.user_template),
    "rules + hard shots": SentimentPrompt(SYS_RULES, base.examples + HARD_SHOT, user_template=base.user_template),
    "previous + hard + sarcasm shots": SentimentPrompt(
        base.system, base.examples + HARD_SHOT + SARCASM_SHOT, user_template=base.user_template
    ),
}

# -- issue 23, second round: more demonstrations, each phenomenon in both directions ---------------------
# The served ones (inference_svc/core/prompts.py HARD_CASES), split here so a variant can leave a kind out:
# DEMOS has no sarcasm, so variants built on it keep sarcasm out of tuning.

CANDIDATE_SYSTEM = prompts.SENTIMENT.system
CANDIDATE_DEMONSTRATIONS = prompts.HARD_CASES

DEMOS = CANDIDATE_DEMONSTRATIONS[:16]
SARCASM_DEMOS = CANDIDATE_DEMONSTRATIONS[16:20]
SARCASM_MORE = CANDIDATE_DEMONSTRATIONS[20:]
SYS_SARCASM = CANDIDATE_SYSTEM

SYS_VERDICT = (
    "You are a sentiment classifier. Read the user's text (English or Chinese) and decide whether the writer is, "
    "overall, pleased (Positive) or displeased (Negative). Answer with exactly one word: Positive or Negative."
)

#: Dev accuracy (hard cases en / zh; clean 100% / 100% for all) at per-script biases fitted on dev, last run on a
#: Zen 4 (int4-bf16): previous 81.2 / 77.1 (sarcasm 0 / 1 of 8); "+ demos" 79.2 / 77.1; "verdict + demos"
#: 79.2 / 79.2; "+ demos + sarcasm" 79.2 / 77.1; "sarcasm rules + demos + sarcasm8" (served) 79.2 / 79.2 with
#: sarcasm still 0 / 1 of 8 but its wrong margins a third smaller (English mock praise: mean +3.8 -> +2.5
#: logits) and the non-sarcasm hard cases 2 / 3 errors of 40. The fitted biases moved with the demonstrations (previous
#: -0.72 / -0.61, served 0.26 / 0.90), towards the old corpus sets' calibration.
VARIANTS.update(
    {
        "previous + demos": SentimentPrompt(base.system, base.examples + DEMOS, user_template=base.user_template),
        "previous + demos + sarcasm": SentimentPrompt(
            base.system, base.examples + DEMOS + SARCASM_DEMOS, user_template=base.user_template
        ),
        "verdict + demos": SentimentPrompt(SYS_VERDICT, base.examples + DEMOS, user_template=base.user_template),
        "sarcasm rules + demos": SentimentPrompt(SYS_SARCASM, base.examples + DEMOS, user_template=base.user_template),
        "previous + demos + sarcasm8": SentimentPrompt(
            base.system, base.examples + DEMOS + SARCASM_DEMOS + SARCASM_MORE, user_template=base.user_template
        ),
        "sarcasm rules + demos + sarcasm8": SentimentPrompt(
            SYS_SARCASM, base.examples + DEMOS + SARCASM_DEMOS + SARCASM_MORE, user_template=base.user_template
        ),
    }
)

#: The round's candidate, served since 2026-12-07 (prompts.SENTIMENT); bench-sentiment scores it against PREVIOUS.
CANDIDATE = prompts.SENTIMENT
