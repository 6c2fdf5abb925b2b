"""Token choice as pure per-row functions, the model's decoding defaults and end-of-turn tokens, and their range checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from inference_svc.core import generation
from inference_svc.core.decoding import (
    min_p_filter,
    penalize_repetition,
    pick_token,
    previous_ids,
    top_k_filter,
    top_p_filter,
    with_defaults,
)
from reprise.domain import Decoding
from reprise.errors import InvalidArgument
from reprise.sampling import check_sampling

LOGITS = torch.tensor([2.0, 1.0, -1.0, 0.5, 1.9])


def _kept(scores: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(scores.tolist()) if v != -math.inf}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once_per_id() -> None:
    out = penalize_repetition(LOGITS, torch.tensor([0, 2, 0]), 2.0)
    assert out.tolist() == pytest.approx([1.0, 1.0, -2.0, 0.5, 1.9])
    assert LOGITS[0] == 2.0  # the input is not modified
    assert penalize_repetition(LOGITS, torch.tensor([], dtype=torch.long), 2.0).tolist() == LOGITS.tolist()
    assert penalize_repetition(LOGITS, torch.tensor([99, -1]), 2.0).tolist() == LOGITS.tolist()  # out of vocab: ignored


def test_greedy_with_a_repetition_penalty_avoids_the_repeated_token() -> None:
    assert pick_token(LOGITS, Decoding(), None, [0]) == 0  # no penalty set: previous is ignored
    assert pick_token(LOGITS, Decoding(repetition_penalty=1.0), None, [0]) == 0
    assert pick_token(LOGITS, Decoding(repetition_penalty=1.1), None, [0]) == 4  # 2.0/1.1 < 1.9
    assert pick_token(LOGITS, Decoding(repetition_penalty=1.1), None, torch.tensor([0])) == 4
    assert pick_token(LOGITS, Decoding(repetition_penalty=1.1), None, None) == 0


def test_filters_keep_what_they_should() -> None:
    assert _kept(top_k_filter(LOGITS, 2)) == {0, 4}
    assert _kept(top_k_filter(LOGITS, 0)) == set(range(5))
    assert _kept(top_k_filter(LOGITS, 99)) == set(range(5))
    p = torch.softmax(LOGITS, -1)
    assert _kept(top_p_filter(LOGITS, float(p[0]) - 1e-4)) == {0}  # the best alone reaches p
    assert _kept(top_p_filter(LOGITS, float(p[0] + p[4]) - 1e-4)) == {0, 4}
    assert _kept(top_p_filter(LOGITS, 1e-9)) == {0}  # never empty
    assert _kept(top_p_filter(LOGITS, 1.0)) == set(range(5))
    # min_p: tokens at least 0.5x as likely as the best: logit >= 2 - ln 2 = 1.31.
    assert _kept(min_p_filter(LOGITS, 0.5)) == {0, 4}
    assert _kept(min_p_filter(LOGITS, 0.0)) == set(range(5))
    assert _kept(min_p_filter(LOGITS, 1.0)) == {0}


def test_sampling_draws_only_from_the_filtered_tokens_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    assert {pick_token(LOGITS, Decoding(temperature=2.0, top_k=2), g) for _ in range(200)} == {0, 4}
    assert {pick_token(LOGITS, Decoding(temperature=1.0, min_p=0.5), g) for _ in range(200)} == {0, 4}
    # min_p reads the tempered probabilities (as Hugging Face does): at 2, token 1 is half as likely as the best.
    assert {pick_token(LOGITS, Decoding(temperature=2.0, min_p=0.5), g) for _ in range(300)} == {0, 1, 4}
    # The penalty is applied before the filters: token 0 drops out of the top 1.
    assert {pick_token(LOGITS, Decoding(temperature=1.0, top_k=1, repetition_penalty=1.5), g, [0]) for _ in range(20)} == {4}
    wide = Decoding(temperature=1.5, top_k=4, top_p=0.95, min_p=0.01)
    first = [pick_token(LOGITS, wide, torch.Generator().manual_seed(9)) for _ in range(5)]
    assert first == [pick_token(LOGITS, wide, torch.Generator().manual_seed(9)) for _ in range(5)]


def test_previous_ids_are_distinct_and_leave_the_end_of_turn_tokens_out() -> None:
    assert previous_ids([5, 3, 5, 7, 9], exempt={7}).tolist() == [3, 5, 9]


def test_request_fields_win_over_the_model_defaults_and_temperature_is_never_defaulted() -> None:
    model = Decoding(temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.1, max_new_tokens=9, seed=1)
    merged = with_defaults(Decoding(top_k=0, stop=("x",)), model)
    assert merged == Decoding(top_p=0.8, top_k=0, min_p=0.05, repetition_penalty=1.1, stop=("x",))
    assert merged.greedy
    request = Decoding(temperature=0.3, top_p=1.0, top_k=5, min_p=0.0, repetition_penalty=1.0)
    assert with_defaults(request, model) == request
    assert with_defaults(Decoding(), Decoding()) == Decoding()


def test_defaults_are_read_from_the_generation_config(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05})
    )
    assert generation.read_defaults(tmp_path) == Decoding(top_p=0.8, top_k=20, repetition_penalty=1.05)
    # The file wins over the fallback; the fallback fills what it lacks.
    got = generation.read_defaults(tmp_path, {"top_k": 50, "min_p": 0.1})
    assert got == Decoding(top_p=0.8, top_k=20, min_p=0.1, repetition_penalty=1.05)
    assert generation.describe(got) == {"top_p": 0.8, "top_k": 20, "min_p": 0.1, "repetition_penalty": 1.05}


def test_generation_config_values_that_change_nothing_or_are_out_of_range_are_left_unset(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "max_new_tokens": 7})
    )
    assert generation.read_defaults(tmp_path) == Decoding()
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"top_k": -3, "top_p": 1.5, "min_p": "x", "repetition_penalty": 0.0})
    )
    assert generation.read_defaults(tmp_path) == Decoding()
    (tmp_path / "generation_config.json").write_text("not json")
    assert generation.read_defaults(tmp_path) == Decoding()
    assert generation.read_defaults(tmp_path / "missing") == Decoding()


@pytest.mark.parametrize(
    "decoding, field, words",
    [
        (Decoding(temperature=2.5), "decoding.temperature", "[0, 2]"),
        (Decoding(top_p=0.0), "decoding.top_p", "(0, 1]"),
        (Decoding(top_k=-1), "decoding.top_k", ">= 0"),
        (Decoding(min_p=1.5), "decoding.min_p", "[0, 1]"),
        (Decoding(min_p=float("nan")), "decoding.min_p", "[0, 1]"),
        (Decoding(repetition_penalty=0.0), "decoding.repetition_penalty", "(0, 2]"),
        (Decoding(repetition_penalty=2.5), "decoding.repetition_penalty", "(0, 2]"),
        (Decoding(repetition_penalty=float("inf")), "decoding.repetition_penalty", "(0, 2]"),
    ],
)
def test_out_of_range_decoding_is_refused_naming_the_field(decoding: Decoding, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_sampling(decoding)
    assert err.value.field == field and words in str(err.value)


def test_in_range_decoding_passes() -> None:
    check_sampling(Decoding(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=2.0))
    check_sampling(Decoding(temperature=2.0, top_p=0.01, top_k=100_000, min_p=1.0, repetition_penalty=0.5))


@pytest.mark.parametrize("penalty", [1.1, 1.5, 0.8])
def test_greedy_with_a_penalty_picks_the_first_maximum_of_the_penalized_logits(penalty: float) -> None:
    """pick_token skips the copy when the best token is not penalized; its answer must not change (ties included)."""
    gen = torch.Generator().manual_seed(3)
    for trial in range(300):
        logits = torch.randint(-4, 5, (40,), generator=gen).float() / 2  # coarse values: many ties
        previous = torch.randint(0, 40, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen)
        expected = int(torch.argmax(penalize_repetition(logits, previous, penalty)))
        got = pick_token(logits, Decoding(repetition_penalty=penalty), None, previous)
        assert got == expected, (trial, logits.tolist(), previous.tolist())
