"""Per-task policy defaults, validation messages (field + why), admission."""

from __future__ import annotations

import pytest

from gateway.core.limits import Admission, Limits, Validator
from gateway.core.policy import REASON_NO_CACHE, REASON_SAMPLED, Policies
from gateway.core.types import Policy, Prompt
from reprise.domain import Decoding, Role, Turn
from reprise.errors import InvalidArgument, ResourceExhausted


def test_task_defaults_sentiment_exact_only_chat_semantic() -> None:
    p = Policies()
    assert p.plan("sentiment", Policy()).exact_only is True
    assert p.plan("sentiment", Policy(exact_only=False)).exact_only is False
    assert p.plan("chat", Policy()).exact_only is False
    plan = p.plan("chat", Policy(min_similarity=0.9, ttl_s=5, max_age_s=7))
    assert (plan.min_similarity, plan.ttl_s, plan.max_age_s) == (0.9, 5, 7)


def test_sampled_replies_are_not_cached_unless_asked_or_seeded() -> None:
    p = Policies()
    sampled = Decoding(temperature=0.8)
    plan = p.plan("chat", Policy(), sampled)
    assert (plan.lookup, plan.store, plan.coalesce, plan.reason) == (False, False, False, REASON_SAMPLED)
    plan = p.plan("chat", Policy(cache_sampled=True), sampled)
    assert plan.lookup and plan.store and plan.coalesce
    seeded = p.plan("chat", Policy(), Decoding(temperature=0.8, seed=7))
    assert seeded.lookup and seeded.store


def test_no_cache_and_no_store() -> None:
    p = Policies()
    plan = p.plan("chat", Policy(no_cache=True))
    assert not plan.lookup and plan.store and plan.reason == REASON_NO_CACHE
    plan = p.plan("chat", Policy(no_store=True))
    assert plan.lookup and not plan.store


V = Validator(Limits(max_text_chars=20, max_history_turns=2, max_system_prompt_chars=10, max_total_chars=50,
                     max_new_tokens=100, max_stop_strings=2, max_stop_chars=4, max_ttl_s=60, max_request_bytes=100))
U, A = Role.USER, Role.ASSISTANT


@pytest.mark.parametrize(
    ("call", "field", "why"),
    [
        (lambda: V.text("  "), "text", "must not be empty"),
        (lambda: V.text("x" * 21), "text", "limit is 20"),
        (lambda: V.request_size(101), "request", "limit is 100"),
        (lambda: V.tasks(("sentiment", "summarize")), "tasks[1]", "unknown task 'summarize'"),
        (lambda: V.tasks(("chat", "chat")), "tasks[1]", "named twice"),
        (lambda: V.chat(Prompt("hi", system_prompt="s" * 11)), "system_prompt", "limit is 10"),
        (lambda: V.chat(Prompt("hi", (Turn(U, "a"), Turn(A, "b"), Turn(U, "c")))), "history", "limit is 2"),
        (lambda: V.chat(Prompt("hi", (Turn(A, "a"),))), "history[0].role", "must be user"),
        (lambda: V.chat(Prompt("hi", (Turn(U, " "),))), "history[0].content", "must not be empty"),
        (lambda: V.chat(Prompt("z" * 20, (Turn(U, "x" * 20), Turn(A, "y" * 20)))), "history", "limit is 50"),
        (lambda: V.decoding(Decoding(temperature=2.5)), "decoding.temperature", "[0, 2]"),
        (lambda: V.decoding(Decoding(temperature=float("nan"))), "decoding.temperature", "[0, 2]"),
        (lambda: V.decoding(Decoding(top_p=0.0)), "decoding.top_p", "(0, 1]"),
        (lambda: V.decoding(Decoding(top_k=-1)), "decoding.top_k", ">= 0"),
        (lambda: V.decoding(Decoding(repetition_penalty=2.5)), "decoding.repetition_penalty", "(0, 2]"),
        (lambda: V.decoding(Decoding(max_new_tokens=0)), "decoding.max_new_tokens", "[1, 100]"),
        (lambda: V.decoding(Decoding(max_new_tokens=101)), "decoding.max_new_tokens", "[1, 100]"),
        (lambda: V.decoding(Decoding(stop=("a", "b", "c"))), "decoding.stop", "limit is 2"),
        (lambda: V.decoding(Decoding(stop=("",))), "decoding.stop[0]", "must not be empty"),
        (lambda: V.decoding(Decoding(stop=("abcde",))), "decoding.stop[0]", "limit is 4"),
        (lambda: V.policy(Policy(min_similarity=1.5)), "cache.min_similarity", "[0, 1]"),
        (lambda: V.policy(Policy(ttl_s=0)), "cache.ttl_seconds", "[1, 60]"),
        (lambda: V.policy(Policy(ttl_s=61)), "cache.ttl_seconds", "[1, 60]"),
    ],
)
def test_each_violation_names_the_field_and_why(call, field: str, why: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as err:
        call()
    assert err.value.field == field
    assert why in err.value.message


def test_valid_requests_pass() -> None:
    V.chat(Prompt("hi", (Turn(U, "a"), Turn(A, "b")), system_prompt="sys", decoding=Decoding(temperature=0.7, top_p=0.9, max_new_tokens=100, stop=("##",))))
    assert V.tasks(()) == ("sentiment", "chat")
    assert V.tasks(("chat", "sentiment")) == ("sentiment", "chat")


def test_admission_refuses_over_the_limit_and_frees_slots() -> None:
    a = Admission(2, "things")
    with a.slot(), a.slot():
        with pytest.raises(ResourceExhausted) as err:
            with a.slot():
                pass
        assert "2 in flight" in err.value.message
    assert a.in_flight == 0 and a.rejected == 1
    with a.slot():
        pass
