"""``python -m bench.inference.sentiment_tune``: compare sentiment prompts on the *dev* split and fit calibration.

Prints each variant's dev accuracy per language: uncalibrated, with one bias
shared by both languages, and with a bias per script (CJK texts get their own,
see ``SentimentPrompt.bias_cjk``); writes ``bench/results/inference-sentiment-tuning.json``. The
chosen variant and bias are then written into
``inference_svc/core/prompts.py`` by hand; the held-out test split is only
touched by the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.inference import datasets, engines
from inference_svc.core import prompts
from inference_svc.core.engine import Engine
from inference_svc.core.prompts import SentimentPrompt
from reprise.domain import Label

P, N = Label.POSITIVE, Label.NEGATIVE
SYS_PLAIN = (
    "You are a sentiment classifier. Read the user's text (English or Chinese) and answer with "
    "exactly one word: Positive or Negative."
)
SYS_FEEDBACK = (
    "You classify the sentiment of customer feedback: reviews, complaints and messages to companies, in English or "
    "Chinese. Answer Positive if the writer is overall satisfied, pleased or thankful; answer Negative if the writer "
    "is overall dissatisfied, complaining, disappointed or annoyed, even when the complaint is polite or sarcastic. "
    "Answer with exactly one word: Positive or Negative."
)
SYS_ZH = (
    "你是一个情感分类器。判断用户文本（中文或英文）的整体情感：满意、称赞、感谢为 Positive；不满、抱怨、失望、讽刺为 Negative。"
    "只回答一个词：Positive 或 Negative。"
)
QUESTION = "{text}\n\nIs the sentiment of this text Positive or Negative?"
#: The question before the text lands in the cached prefix: each request then runs 11 fewer tokens.
QUESTION_FIRST = "Is the sentiment of this text Positive or Negative?\n\n{text}"
SHORT_QUESTION = "{text}\n\nPositive or Negative?"
#: Chinese turns for what the model gets wrong on the audited dev split: mild complaints, sarcasm,
#: and idioms whose words point the other way (没得说 "nothing to fault", 不是一般的差 "extraordinarily bad").
ZH_HARD: tuple[tuple[str, Label], ...] = (
    ("房间里的矿泉水和茶包都要另外收费，真小气。", N),
    ("质量没得说，发货也快。", P),
    ("服务不是一般的差，再也不来了。", N),
    ("这种书也能上畅销榜？真佩服作者。", N),
    ("整体印象一般，没什么特别的。", N),
)
SYS_MILD = (
    "You are a sentiment classifier. Read the user's text (English or Chinese) and answer with exactly one word: "
    "Positive or Negative. A text whose main point is a problem, a defect, an extra charge or an inconvenience is "
    "Negative even when it is mild, shrugged off or sarcastic; a text whose main point is praise or satisfaction is "
    "Positive."
)
VARIANTS = {
    "plain (seed prompt)": SentimentPrompt(SYS_PLAIN),
    "feedback + 8-shot": SentimentPrompt(SYS_FEEDBACK, prompts.FEW_SHOT),
    "plain + 8-shot": SentimentPrompt(SYS_PLAIN, prompts.FEW_SHOT),
    "plain + 8-shot + question": SentimentPrompt(SYS_PLAIN, prompts.FEW_SHOT, user_template=QUESTION),
    "feedback + 8-shot + question": SentimentPrompt(SYS_FEEDBACK, prompts.FEW_SHOT, user_template=QUESTION),
    "chinese system + 8-shot": SentimentPrompt(SYS_ZH, prompts.FEW_SHOT),
    "plain + 8-shot + zh-hard + question": SentimentPrompt(SYS_PLAIN, prompts.FEW_SHOT + ZH_HARD, user_template=QUESTION),
    "mild + 8-shot + question": SentimentPrompt(SYS_MILD, prompts.FEW_SHOT, user_template=QUESTION),
    "mild + 8-shot + zh-hard + question": SentimentPrompt(SYS_MILD, prompts.FEW_SHOT + ZH_HARD, user_template=QUESTION),
    "plain + 8-shot + question first": SentimentPrompt(SYS_PLAIN, prompts.FEW_SHOT, user_template=QUESTION_FIRST),
    "plain + 8-shot + short question": SentimentPrompt(SYS_PLAIN, prompts.FEW_SHOT, user_template=SHORT_QUESTION),
}
#: Tried during development and dropped (dev accuracy, bias fitted for both languages together):
#: "feedback" system prompt zero-shot en 0.915 / zh 0.74; "plain + question" 0.915 / 0.74;
#: label-word sets {Positive, positive, 正面, 积极} vs {Negative, negative, 负面, 消极} changed nothing
#: (0.94 / 0.775 vs 0.935 / 0.775); a Chinese system prompt 0.765 on zh.


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def scores(engine: Engine, spec: SentimentPrompt, examples: list[datasets.Example]) -> list[float]:
    """Uncalibrated logit of P(positive) per example."""
    engine.set_sentiment_prompt(SentimentPrompt(spec.system, spec.examples, spec.label_words, 0.0, None, spec.user_template))
    out: list[float] = []
    for i in range(0, len(examples), 16):
        out += [_logit(r.p_positive) for r in engine.classify_batch([e.text for e in examples[i : i + 16]])]
    return out


def accuracy(logits: list[float], examples: list[datasets.Example], bias: float = 0.0) -> float:
    return sum((x - bias > 0) == e.positive for x, e in zip(logits, examples)) / len(examples)


def fit_bias(per_lang: dict[str, tuple[list[float], list[datasets.Example]]]) -> float:
    """The bias maximising mean accuracy over languages (ties: the smallest correction)."""
    points = sorted({round(x, 3) for lg, _ in per_lang.values() for x in lg})
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(points, points[1:])]
    mean = lambda b: sum(accuracy(lg, ex, b) for lg, ex in per_lang.values()) / len(per_lang)  # noqa: E731
    return max(candidates, key=lambda b: (round(mean(b), 6), -abs(b)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.sentiment_tune", description=__doc__)
    engines.add_model_cache(parser)
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--variant", action="append", help="only these variants (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=engines.RESULTS / "inference-sentiment-tuning.json")
    args = parser.parse_args()
    engine = engines.serving_engine(args.model_cache, args.weights)
    dev = {lang: split.dev for lang, split in datasets.load().items()}
    # The Chinese dev texts whose corpus label a reader agrees with (see datasets.supported_mask).
    supported = datasets.supported_mask("dev", dev["zh"])
    rows = []
    for name, spec in VARIANTS.items():
        if args.variant and name not in args.variant:
            continue
        per_lang = {lang: (scores(engine, spec, ex), ex) for lang, ex in dev.items()}
        bias = fit_bias(per_lang)
        row = {"variant": name, "bias_shared": bias}
        for lang, (lg, ex) in per_lang.items():
            own = fit_bias({lang: (lg, ex)})
            row[lang] = accuracy(lg, ex)
            row[f"{lang}_shared_bias"] = accuracy(lg, ex, bias)
            row[f"{lang}_bias"] = own
            row[f"{lang}_own_bias"] = accuracy(lg, ex, own)
        lg, ex = zip(*((x, e) for x, e, keep in zip(*per_lang["zh"], supported) if keep))
        row["zh_audited_bias"] = fit_bias({"zh": (list(lg), list(ex))})
        row["zh_audited"] = accuracy(list(lg), list(ex), row["zh_audited_bias"])
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"split": "dev", "n_per_language": {k: len(v) for k, v in dev.items()}, "variants": rows}, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
