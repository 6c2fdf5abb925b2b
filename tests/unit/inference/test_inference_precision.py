"""Choosing the compute dtype: the timing that decides it must not be decided by other work."""

from __future__ import annotations

import time

import pytest

from inference_svc.core import precision


def test_race_alternates_the_candidates_so_a_burst_hits_both() -> None:
    calls: list[str] = []
    precision._race(lambda: calls.append("a"), lambda: calls.append("b"), repeat=4)
    assert calls == ["a", "b"] * 5  # one warm-up pair, then strictly alternating


def test_race_keeps_the_best_time_of_each() -> None:
    slow_first = iter([0.02, 0.02, 0.02])  # a burst of other work during a's first runs

    def a() -> None:
        time.sleep(next(slow_first, 0.0))

    def b() -> None:
        time.sleep(0.005)

    best_a, best_b = precision._race(a, b, repeat=6)
    assert best_a < 0.004 < best_b


def test_explicit_choices_need_no_measurement() -> None:
    assert precision.choose("fp32", "auto").weights is precision.WeightFormat.DENSE
    with pytest.raises(ValueError, match="needs --dtype bf16"):
        precision.choose("fp32", "int4")
    with pytest.raises(ValueError, match="expected auto, bf16 or fp32"):
        precision.choose("fp16", "auto")
