"""The exact key and the decoding parameters: two requests that may be answered differently never share an entry."""

from __future__ import annotations

import pytest

from cache_svc.core.keys import exact_key, partition_key
from cache_svc.core.normalize import Normalization
from cache_svc.core.types import CacheQuery
from reprise.domain import Decoding

N = Normalization()


def _q(decoding: Decoding) -> CacheQuery:
    return CacheQuery(
        namespace="t", model_id="m", model_revision="r", task="chat", text="Hello there", decoding=decoding
    )


SAMPLED = Decoding(temperature=0.7, seed=3)


@pytest.mark.parametrize(
    "a, b",
    [
        # Sampling filters split sampled keys, each of them, at any value.
        (SAMPLED, Decoding(temperature=0.7, seed=3, top_k=20)),
        (Decoding(temperature=0.7, seed=3, top_k=20), Decoding(temperature=0.7, seed=3, top_k=40)),
        (SAMPLED, Decoding(temperature=0.7, seed=3, min_p=0.05)),
        (Decoding(temperature=0.7, seed=3, min_p=0.05), Decoding(temperature=0.7, seed=3, min_p=0.1)),
        # An explicit "off" value is not "unset": unset takes the model's default, which may be on.
        (SAMPLED, Decoding(temperature=0.7, seed=3, top_p=1.0)),
        (SAMPLED, Decoding(temperature=0.7, seed=3, top_k=0)),
        # The repetition penalty changes greedy replies too.
        (Decoding(), Decoding(repetition_penalty=1.1)),
        (Decoding(), Decoding(repetition_penalty=1.0)),
        (Decoding(repetition_penalty=1.1), Decoding(repetition_penalty=1.2)),
        (SAMPLED, Decoding(temperature=0.7, seed=3, repetition_penalty=1.1)),
    ],
)
def test_requests_differing_in_a_decoding_parameter_never_share_an_entry(a: Decoding, b: Decoding) -> None:
    assert exact_key(_q(a), N) != exact_key(_q(b), N)
    assert partition_key(_q(a), N) != partition_key(_q(b), N)  # nor a semantic candidate


def test_sampling_filters_do_not_split_greedy_keys() -> None:
    """top_k and min_p, like top_p, cannot change a greedy reply: greedy requests still share one entry."""
    assert exact_key(_q(Decoding(top_k=5, min_p=0.2)), N) == exact_key(_q(Decoding()), N)
    assert exact_key(_q(Decoding(temperature=0.0, top_k=5)), N) == exact_key(_q(Decoding()), N)
