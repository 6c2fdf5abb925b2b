"""A circuit breaker in front of the cache: a dead cache must cost nothing per request.

CLOSED: every request asks the cache; ``failure_threshold`` failures in a row
(errors or timeouts) open it. OPEN: nobody asks the cache (requests go
straight to the model) until ``open_s`` passed. HALF_OPEN: exactly one request
(the probe) asks the cache; success closes the breaker, failure opens it again
for twice as long (up to ``max_open_s``), so a cache that stays down is probed
less and less often. A probe that never reports back (its caller went away)
is forgotten after ``probe_timeout_s`` so the breaker cannot wedge half-open.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 3
    open_s: float = 1.0
    max_open_s: float = 30.0
    probe_timeout_s: float = 5.0


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig = BreakerConfig(),
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_for = config.open_s
        self._reopen_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        """May this request ask the cache? A True in HALF_OPEN makes the caller the probe."""
        if self._state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if self._state is BreakerState.OPEN:
            if now < self._reopen_at:
                return False
            self._set(BreakerState.HALF_OPEN)
            self._probe_started = now
            return True
        if self._probe_started is not None and now - self._probe_started < self._config.probe_timeout_s:
            return False
        self._probe_started = now
        return True

    def success(self) -> None:
        self._failures = 0
        self._probe_started = None
        self._open_for = self._config.open_s
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open_for = min(self._open_for * 2, self._config.max_open_s)
            self._trip()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self._config.failure_threshold:
            self._trip()

    def abandon(self) -> None:
        """The caller went away before the cache answered: no verdict, free the probe slot."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_started = None

    def _trip(self) -> None:
        self._probe_started = None
        self._reopen_at = self._clock() + self._open_for
        self._set(BreakerState.OPEN)
