"""Consistent hashing with bounded load: which inference replica serves a call (issue 25, item 4)."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.core.ring import Ring, Route, conversation_key
from gateway.core.types import Prompt
from gateway.replicas import RoutedInference, parse_target
from reprise.rpc.tls import ClientTLS
from reprise.domain import Role, Turn

A, B, C = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"


def ring(*members: str, load_factor: float = 1.25) -> Ring:
    r = Ring(load_factor=load_factor)
    r.set_members(members)
    return r


def keys(n: int) -> list[bytes]:
    return [conversation_key(Prompt(f"conversation {i}")) for i in range(n)]


def everyone(_: str) -> bool:
    return True


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    first = conversation_key(Prompt("Plan a trip to Kyoto", system_prompt="be brief"))
    history = (Turn(Role.USER, "Plan a trip to Kyoto"), Turn(Role.ASSISTANT, "Day 1: ..."))
    assert conversation_key(Prompt("And day 3?", history, "be brief")) == first
    assert conversation_key(Prompt("Thanks", history + (Turn(Role.USER, "And day 3?"), Turn(Role.ASSISTANT, "...")), "be brief")) == first
    assert conversation_key(Prompt("Plan a trip to Kyoto", system_prompt="be verbose")) != first  # another system prompt: another prefix


def test_a_key_always_lands_on_the_same_replica_and_keys_spread() -> None:
    r = ring(A, B, C)
    homes = [r.pick(k, {}, everyone) for k in keys(3000)]
    assert all(p is not None and p.route is Route.HOME for p in homes)
    assert [r.pick(k, {}, everyone) for k in keys(3000)] == homes
    share = Counter(p.member for p in homes)  # type: ignore[union-attr]
    assert set(share) == {A, B, C} and min(share.values()) > 3000 / 3 * 0.7


def test_removing_a_replica_moves_only_its_conversations() -> None:
    before = {k: ring(A, B, C).pick(k, {}, everyone).member for k in keys(1000)}  # type: ignore[union-attr]
    r = ring(A, B)
    after = {k: r.pick(k, {}, everyone).member for k in keys(1000)}  # type: ignore[union-attr]
    assert all(after[k] == m for k, m in before.items() if m != C)
    assert all(after[k] in (A, B) for k, m in before.items() if m == C)


def test_a_down_replica_is_passed_over_and_its_conversations_come_back() -> None:
    r = ring(A, B, C)
    on_a = [k for k in keys(200) if r.pick(k, {}, everyone).member == A]  # type: ignore[union-attr]
    moved = [r.pick(k, {}, lambda m: m != A) for k in on_a]
    assert all(p is not None and p.member != A and p.route is Route.FAILOVER for p in moved)
    assert all(r.pick(k, {}, everyone).member == A for k in on_a)  # type: ignore[union-attr]
    assert r.pick(on_a[0], {}, lambda m: False) is None


def test_an_overloaded_replica_spills_to_the_next_one() -> None:
    r = ring(A, B, load_factor=1.25)
    key = next(k for k in keys(50) if r.pick(k, {}, everyone).member == A)  # type: ignore[union-attr]
    assert r.pick(key, {A: 1, B: 1}, everyone).member == A  # type: ignore[union-attr]  # bound ceil(1.25*3/2)=2
    spilled = r.pick(key, {A: 4, B: 1}, everyone)  # bound ceil(1.25*6/2)=4: A is full
    assert spilled is not None and spilled.member == B and spilled.route is Route.SPILL


def test_calls_without_a_key_go_to_the_least_loaded_in_turn() -> None:
    r = ring(A, B, C)
    assert r.pick(None, {A: 2, B: 0, C: 1}, everyone).member == B  # type: ignore[union-attr]
    idle = Counter(r.pick(None, {}, everyone).member for _ in range(300))  # type: ignore[union-attr]
    assert idle == Counter({A: 100, B: 100, C: 100})


def test_load_factor_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Ring(load_factor=0.9)


@pytest.mark.parametrize(
    ("target", "fixed", "resolve"),
    [
        ("dns:///reprise-inference-headless:50051", [], "reprise-inference-headless:50051"),
        ("127.0.0.1:50051", [], "127.0.0.1:50051"),
        ("127.0.0.1:1, 127.0.0.1:2", ["127.0.0.1:1", "127.0.0.1:2"], None),
    ],
)
def test_targets(target: str, fixed: list[str], resolve: str | None) -> None:
    assert parse_target(target) == (fixed, resolve)



@pytest.mark.parametrize(
    ("target", "given", "verified"),
    [
        ("dns:///reprise-inference-headless:50051", None, "reprise-inference-headless"),  # pods dialled by IP
        ("dns:///reprise-inference-headless:50051", "reprise-inference", "reprise-inference"),  # as configured
        ("127.0.0.1:50051", None, None),  # an address: verified as itself
    ],
)
def test_the_name_verified_in_a_replicas_certificate(target: str, given: str | None, verified: str | None) -> None:
    routed = RoutedInference(target, ClientTLS(ca="ca.crt", server_name=given), lambda a, t: None)  # type: ignore[arg-type,return-value]
    assert routed._tls is not None and routed._tls.server_name == verified
