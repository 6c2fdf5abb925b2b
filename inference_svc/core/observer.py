"""Where the engine and the model worker report: Prometheus in production (:mod:`inference_svc.metrics`), nowhere in tests.

The core never imports the metrics module (it is the service's edge, like gRPC); the
composition root passes one :class:`Observer` to the engine and the worker. All calls
come from the model worker thread, except :meth:`Observer.queue_depth`, which the event
loop reports too when it queues a job.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def queue_capacity(self, jobs: int) -> None:
        """The worker queue holds ``jobs`` before refusing (set once, when the worker is built)."""

    def queue_depth(self, jobs: int) -> None:
        """Jobs now waiting for the worker (calls, and streams beyond the free decode slots)."""

    def active_streams(self, streams: int) -> None:
        """Chat replies now being decoded."""

    def classify_pass(self, texts: int) -> None:
        """One classify forward pass ran over ``texts`` distinct texts."""

    def prompt(self, tokens: int, cached: int) -> None:
        """A prompt of ``tokens`` tokens was prefilled, ``cached`` of them reused from KV (a classify text or a chat)."""

    def prefix_lookup(self, hit: bool) -> None:
        """A chat looked its prompt up in the KV prefix index."""

    def first_token(self, seconds: float) -> None:
        """A chat's prefill took ``seconds`` (its time to first token)."""

    def generated(self, tokens: int) -> None:
        """A chat reply ended (finished, stopped or cancelled) after ``tokens`` tokens."""

    def decode_speed(self, tokens_per_second: float) -> None:
        """A finished chat reply decoded at this speed (tokens after the first, over their time)."""

    def kv_index(self, entries: int, nbytes: int) -> None:
        """The KV prefix index now holds ``entries`` sequences in ``nbytes`` bytes."""


class NullObserver:
    """Reports nowhere (unit tests, benchmarks and tools that build an engine without a server)."""

    def queue_capacity(self, jobs: int) -> None:
        pass

    def queue_depth(self, jobs: int) -> None:
        pass

    def active_streams(self, streams: int) -> None:
        pass

    def classify_pass(self, texts: int) -> None:
        pass

    def prompt(self, tokens: int, cached: int) -> None:
        pass

    def prefix_lookup(self, hit: bool) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def generated(self, tokens: int) -> None:
        pass

    def decode_speed(self, tokens_per_second: float) -> None:
        pass

    def kv_index(self, entries: int, nbytes: int) -> None:
        pass
