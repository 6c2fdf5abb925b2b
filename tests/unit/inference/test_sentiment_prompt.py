"""The served sentiment prompt: its demonstrations, its identity and the sets it is measured on (issue 23)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from bench.inference import sentiment_hard
from bench.inference.sentiment_variants import CANDIDATE, CANDIDATE_DEMONSTRATIONS, PREVIOUS, VARIANTS
from inference_svc.core import prompts
from reprise.domain import Label

ROOT = Path(__file__).resolve().parents[3]
SETS = [ROOT / "bench" / "data" / "sentiment" / "labelled.jsonl", ROOT / "bench" / "data" / "sentiment" / "heldout_hard.jsonl"]


def _norm(text: str) -> str:
    """Letters and digits only, lower case: a copy with other punctuation or spacing is still a copy."""
    return re.sub(r"\W+", "", text).lower()


def _evaluated() -> set[str]:
    return {_norm(json.loads(line)["text"]) for path in SETS for line in path.read_text().splitlines() if line.strip()}


def test_no_demonstration_is_an_evaluation_text() -> None:
    evaluated = _evaluated()
    demos = {text for spec in (prompts.SENTIMENT, CANDIDATE, *VARIANTS.values()) for text, _ in spec.examples}
    assert demos and not {t for t in demos if _norm(t) in evaluated}


def test_served_prompt_keeps_the_seed_turns_and_adds_balanced_demonstrations() -> None:
    spec = prompts.SENTIMENT
    assert spec.examples[: len(prompts.FEW_SHOT)] == prompts.FEW_SHOT
    assert spec.examples[len(prompts.FEW_SHOT) :] == CANDIDATE_DEMONSTRATIONS
    # Both labels and both languages among the new turns, so none pulls the prior one way.
    labels = Counter(label for _, label in CANDIDATE_DEMONSTRATIONS)
    assert labels[Label.POSITIVE] == labels[Label.NEGATIVE]
    cjk = Counter(prompts.is_mostly_cjk(t) for t, _ in CANDIDATE_DEMONSTRATIONS)
    assert cjk[True] == cjk[False]
    # The question stays ahead of the text, inside the cached prefix.
    assert spec.user("XYZ").endswith("XYZ") and spec.user("XYZ") != "XYZ"
    assert spec.answer(Label.POSITIVE) == "Positive" and spec.answer(Label.NEGATIVE) == "Negative"
    assert CANDIDATE == prompts.SENTIMENT  # the round's candidate is what is served now


def test_a_changed_sentiment_prompt_is_a_new_prompts_revision() -> None:
    assert PREVIOUS != prompts.SENTIMENT
    assert prompts.revision(PREVIOUS, prompts.CHAT_SYSTEM_PROMPT) != prompts.revision(prompts.SENTIMENT, prompts.CHAT_SYSTEM_PROMPT)


def test_heldout_set_is_balanced_and_disjoint_from_the_labelled_set() -> None:
    rows = [json.loads(line) for line in SETS[1].read_text().splitlines() if line.strip()]
    assert Counter(r["lang"] for r in rows) == {"en": 40, "zh": 40}
    assert len({r["id"] for r in rows}) == len(rows)
    cells = Counter((r["lang"], r["phenomenon"], r["label"]) for r in rows)
    assert set(cells.values()) == {4} and len(cells) == 2 * 5 * 2
    labelled = {_norm(json.loads(line)["text"]) for line in SETS[0].read_text().splitlines() if line.strip()}
    assert not {r["text"] for r in rows if _norm(r["text"]) in labelled}
    examples = sentiment_hard.load(path=SETS[1])
    assert len(examples) == 80 and all(e.kind == "hard" for e in examples)


def _report() -> dict:
    def split(acc: float) -> dict:
        keys = ["en/clean", "zh/clean", "en/hard", "zh/hard", "en/sarcasm_light", "zh/sarcasm_light"]
        return {k: {"n": 8, "accuracy": acc} for k in keys}

    served = {"dev": split(0.95), "test": split(0.94), "heldout": {k: v for k, v in split(0.9).items() if "clean" not in k}}
    previous = {"dev": split(0.8), "test": split(0.8), "heldout": {k: v for k, v in split(0.7).items() if "clean" not in k}}
    return {
        "date": "2026-12-07 06:00", "cpu": "cpu", "cpu_kind": "amd-epyc-zen4", "serving_format": "int4-bfloat16",
        "prompts_revision": "aaa", "served_digest": "ccc", "previous_digest": "bbb", "loadavg_start": 1.0, "loadavg_end": 2.0,
        "served": served, "previous": previous,
        "latency": {"texts": 4, "generate10_p50_ms": 500.0, "classify": {
            "served": {"prefix_tokens": 900, "p50_ms": 90.0, "ratio": 0.18},
            "previous": {"prefix_tokens": 314, "p50_ms": 85.0, "ratio": 0.17}}},
    }


def test_report_says_which_targets_are_met() -> None:
    report = _report()
    text = sentiment_hard.markdown(report)
    assert "| test clean ≥ 93% | **94.0%** (before 80.0%) | **94.0%** (before 80.0%) | no |" not in text
    assert "| test clean ≥ 93% | **94.0%** (before 80.0%) | **94.0%** (before 80.0%) | yes |" in text
    assert "| test hard ≥ 85% | **94.0%** (before 80.0%)" in text
    assert "**0.18x** (the one before 0.17x)" in text and "| yes |" in text.split("classify p50")[1].splitlines()[0]
    report["served"]["test"]["zh/hard"]["accuracy"] = 0.8
    assert "| test hard ≥ 85% | **94.0%** (before 80.0%) | **80.0%** (before 80.0%) | no |" in sentiment_hard.markdown(report)
    assert "| sarcasm_light | 95.0% / 80.0% (8)" in text and "held-out zh |" in text
    assert sentiment_hard.headline(report) == (
        "prompts revision aaa; served prompt: test clean en / zh 94.0% / 94.0%, test hard 94.0% / 80.0%, "
        "held-out hard 90.0% / 90.0%; classify / generate(10) 0.18x"
    )
