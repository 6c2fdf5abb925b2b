"""``python -m bench.inference.sentiment_hard``: sentiment on clean texts and on the hard cases, by phenomenon.

The set is bench/data/sentiment/labelled.jsonl (written for this, no corpus text): clean
reviews and messages, and hard cases — negated negatives (不难用, "no complaints"),
negated positives, contrast (虽然贵，但是…), slang and emoji (绝了, yyds, "slaps", 🔥),
light sarcasm, mixed reviews with a clear verdict — English and Chinese, split dev/test.

``--tune`` compares prompt variants on the *dev* split only and fits the calibration
bias per script there; without it the served prompt is scored on both splits and the
result is written to ``bench/results/inference-sentiment-hard.json``. The test split is
read only by that final scoring.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.inference import engines
from bench.inference.sentiment_tune import fit_bias
from inference_svc.core import prompts
from inference_svc.core.engine import Engine
from inference_svc.core.prompts import SentimentPrompt, is_mostly_cjk

DATA = engines.ROOT / "bench" / "data" / "sentiment" / "labelled.jsonl"


@dataclass(frozen=True)
class Example:
    text: str
    positive: bool
    lang: str
    kind: str
    phenomenon: str
    split: str


def load(split: str | None = None) -> list[Example]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [
        Example(r["text"], r["label"] == "positive", r["lang"], r["kind"], r.get("phenomenon", ""), r["split"])
        for r in rows
        if split is None or r["split"] == split
    ]


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def logits(engine: Engine, spec: SentimentPrompt, examples: list[Example]) -> list[float]:
    """Uncalibrated logit of P(positive) per example, under ``spec`` without its bias."""
    engine.set_sentiment_prompt(SentimentPrompt(spec.system, spec.examples, spec.label_words, 0.0, None, spec.user_template))
    out: list[float] = []
    for i in range(0, len(examples), 16):
        out += [_logit(r.p_positive) for r in engine.classify_batch([e.text for e in examples[i : i + 16]])]
    return out


def table(examples: list[Example], right: list[bool]) -> dict[str, dict[str, float]]:
    """Accuracy by language x (clean | hard | each phenomenon)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for e, ok in zip(examples, right, strict=True):
        groups[f"{e.lang}/{e.kind}"].append(ok)
        if e.phenomenon:
            groups[f"{e.lang}/{e.phenomenon}"].append(ok)
    return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in sorted(groups.items())}


def judge(spec: SentimentPrompt, examples: list[Example], lg: list[float]) -> list[bool]:
    return [(x - spec.bias_for(e.text) > 0) == e.positive for x, e in zip(lg, examples, strict=True)]


def tune(engine: Engine, variants: dict[str, SentimentPrompt]) -> list[dict]:
    dev = load("dev")
    rows = []
    for name, spec in variants.items():
        lg = logits(engine, spec, dev)
        by_script = {
            cjk: ([x for x, e in zip(lg, dev) if is_mostly_cjk(e.text) == cjk], [e for e in dev if is_mostly_cjk(e.text) == cjk])
            for cjk in (False, True)
        }
        bias = {cjk: fit_bias({"x": pair}) for cjk, pair in by_script.items()}  # type: ignore[dict-item]
        fitted = SentimentPrompt(spec.system, spec.examples, spec.label_words, bias[False], bias[True], spec.user_template)
        row = {"variant": name, "bias": bias[False], "bias_cjk": bias[True], "dev": table(dev, judge(fitted, dev, lg))}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.sentiment_hard", description=__doc__.split("\n\n")[0])
    engines.add_model_cache(parser)
    parser.add_argument("--tune", action="store_true", help="compare prompt variants on the dev split (bench/inference/sentiment_variants.py)")
    parser.add_argument("--out", type=Path, default=engines.RESULTS / "inference-sentiment-hard.json")
    args = parser.parse_args()
    engine = engines.serving_engine(args.model_cache)
    if args.tune:
        from bench.inference.sentiment_variants import VARIANTS

        tune(engine, VARIANTS)
        return
    spec = prompts.SENTIMENT
    report = {"prompt_revision": prompts.revision(spec, prompts.CHAT_SYSTEM_PROMPT), "format": engine.describe().weights}
    for split in ("dev", "test"):
        examples = load(split)
        report[split] = table(examples, judge(spec, examples, logits(engine, spec, examples)))
    engine.set_sentiment_prompt(spec)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
