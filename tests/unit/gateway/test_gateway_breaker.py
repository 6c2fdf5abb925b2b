"""Circuit breaker state machine, on a fake clock."""

from __future__ import annotations

from gateway.core.breaker import BreakerConfig, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock, changes = Clock(), []
    b = CircuitBreaker(BreakerConfig(failure_threshold=threshold, open_s=1.0, max_open_s=4.0, probe_timeout_s=5.0), clock, changes.append)
    return b, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    b, _, changes = make()
    b.failure()
    b.failure()
    b.success()  # resets the run
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert changes == [BreakerState.OPEN]


def test_half_open_admits_one_probe_and_success_closes() -> None:
    b, clock, changes = make(threshold=1)
    b.failure()
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.6
    assert b.allow()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # everyone else still bypasses
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_doubles_the_open_period_up_to_the_cap() -> None:
    b, clock, _ = make(threshold=1)
    b.failure()
    periods = []
    for _ in range(4):
        start = clock.now
        while not b.allow():
            clock.now += 0.25
        periods.append(clock.now - start)
        b.failure()
    assert periods == [1.0, 2.0, 4.0, 4.0]


def test_abandoned_probe_frees_the_slot_and_stale_probe_expires() -> None:
    b, clock, _ = make(threshold=1)
    b.failure()
    clock.now += 1.0
    assert b.allow()
    b.abandon()
    assert b.allow()  # a new probe may go
    clock.now += 4.9
    assert not b.allow()
    clock.now += 0.2  # the probe never reported: after probe_timeout_s another one may go
    assert b.allow()
