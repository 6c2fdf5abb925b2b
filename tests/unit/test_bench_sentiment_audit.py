"""The Chinese label audit: it drops exactly the listed texts and refuses a split it was not made for."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.inference import datasets
from bench.inference.__main__ import accuracies
from bench.inference.datasets import Example


def _audit_file(tmp_path: Path, rows: list[tuple[str, int, Example, str]]) -> Path:
    lines = ["# split\tindex\tsha256[:12]\tlabel\tverdict\tnote"]
    for split, index, example, verdict in rows:
        label = "positive" if example.positive else "negative"
        lines.append(f"{split}\t{index}\t{datasets._digest(example.text)}\t{label}\t{verdict}\tnote")
    path = tmp_path / "audit.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


EXAMPLES = [
    Example("房间很干净，服务也好。", True),
    Example("空调声音太大了。", True),  # a fragment of a good review: its label is the review's
    Example("我们一共住了两天。", False),
    Example("再也不会来了。", False),
]


def test_audited_drops_only_the_listed_texts(tmp_path: Path) -> None:
    path = _audit_file(tmp_path, [("test", 1, EXAMPLES[1], "contradicts"), ("test", 2, EXAMPLES[2], "unclear")])
    assert datasets.audited("test", EXAMPLES, path) == [EXAMPLES[0], EXAMPLES[3]]
    assert datasets.supported_mask("test", EXAMPLES, path) == [True, False, False, True]
    # Rows of the other split do not touch this one.
    assert datasets.audited("dev", EXAMPLES, path) == EXAMPLES


def test_audited_refuses_a_split_it_was_not_made_for(tmp_path: Path) -> None:
    path = _audit_file(tmp_path, [("test", 1, EXAMPLES[1], "contradicts")])
    shuffled = [EXAMPLES[0], EXAMPLES[2], EXAMPLES[1], EXAMPLES[3]]
    with pytest.raises(ValueError, match="another test split"):
        datasets.audited("test", shuffled, path)
    with pytest.raises(ValueError, match="beyond the split"):
        datasets.audited("test", EXAMPLES[:1], path)


def test_unknown_verdicts_are_rejected(tmp_path: Path) -> None:
    path = _audit_file(tmp_path, [("test", 0, EXAMPLES[0], "maybe")])
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        datasets.audit(path)


def test_the_shipped_audit_matches_the_current_chinese_splits() -> None:
    """Changing the seed, the filters or the corpus version must come with a new audit."""
    split = datasets.chinese()
    rows = datasets.audit()
    for name in ("dev", "test"):
        examples = getattr(split, name)
        kept = datasets.audited(name, examples)
        listed = sum(1 for key in rows if key[0] == name)
        assert listed > 0 and len(kept) == len(examples) - listed


def test_accuracies_report_both_label_sets() -> None:
    correct = [True, False, True, False]
    assert accuracies(correct, None) == {"accuracy": 0.5, "n": 4}
    out = accuracies(correct, [True, False, True, True])
    assert out["accuracy"] == 0.5 and out["n_label_supported"] == 3
    assert out["accuracy_label_supported"] == pytest.approx(2 / 3)
