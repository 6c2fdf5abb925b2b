"""Request validation and admission: reject bad or excess work before it costs anything.

Every violation is an :class:`~reprise.errors.InvalidArgument` naming the
field and saying why; overload is :class:`~reprise.errors.ResourceExhausted`
at once (bounded concurrency, never a queue that grows).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.core.types import TASKS, Policy, Prompt
from reprise.domain import Decoding
from reprise.errors import InvalidArgument, ResourceExhausted
from reprise.sampling import check_sampling
from reprise.text import check_turns, check_visible


@dataclass(frozen=True)
class Limits:
    #: Longest text (and history turn) in characters.
    max_text_chars: int = 8_000
    max_system_prompt_chars: int = 4_000
    max_history_turns: int = 32
    #: Text + system prompt + history, in characters.
    max_total_chars: int = 32_000
    max_new_tokens: int = 1_024
    max_stop_strings: int = 8
    max_stop_chars: int = 64
    max_ttl_s: int = 30 * 24 * 3600
    #: Serialized request size; larger requests are INVALID_ARGUMENT (the transport's own
    #: ``--max-message-bytes`` limit, above this, answers RESOURCE_EXHAUSTED).
    max_request_bytes: int = 256 * 1024


def _check_chars(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidArgument(field, f"is {len(text)} characters; the limit is {limit}")


class Validator:
    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits

    def request_size(self, size: int) -> None:
        if size > self.limits.max_request_bytes:
            raise InvalidArgument("request", f"is {size} bytes; the limit is {self.limits.max_request_bytes}")

    def text(self, text: str, field: str = "text") -> None:
        check_visible(field, text)
        _check_chars(field, text, self.limits.max_text_chars)

    def tasks(self, tasks: tuple[str, ...]) -> tuple[str, ...]:
        """The tasks Analyze runs: all when none are named; duplicates are an error too."""
        if not tasks:
            return TASKS
        for i, name in enumerate(tasks):
            if name not in TASKS:
                raise InvalidArgument(f"tasks[{i}]", f"unknown task {name!r}; known: {', '.join(TASKS)}")
            if name in tasks[:i]:
                raise InvalidArgument(f"tasks[{i}]", f"{name!r} is named twice")
        return tuple(t for t in TASKS if t in tasks)

    def chat(self, prompt: Prompt) -> None:
        lim, history = self.limits, prompt.history
        self.text(prompt.text)
        if prompt.system_prompt is not None:
            _check_chars("system_prompt", prompt.system_prompt, lim.max_system_prompt_chars)
        if len(history) > lim.max_history_turns:
            raise InvalidArgument("history", f"has {len(history)} turns; the limit is {lim.max_history_turns}")
        total = len(prompt.text) + len(prompt.system_key)
        for i, turn in enumerate(history):
            _check_chars(f"history[{i}].content", turn.content, lim.max_text_chars)
            total += len(turn.content)
        check_turns(history)
        if total > lim.max_total_chars:
            raise InvalidArgument("history", f"text, system prompt and history are {total} characters; the limit is {lim.max_total_chars}")
        self.decoding(prompt.decoding)

    def decoding(self, d: Decoding) -> None:
        lim = self.limits
        check_sampling(d)
        if d.max_new_tokens is not None and not 1 <= d.max_new_tokens <= lim.max_new_tokens:
            raise InvalidArgument("decoding.max_new_tokens", f"must be in [1, {lim.max_new_tokens}]")
        if len(d.stop) > lim.max_stop_strings:
            raise InvalidArgument("decoding.stop", f"has {len(d.stop)} strings; the limit is {lim.max_stop_strings}")
        for i, s in enumerate(d.stop):
            if not s:
                raise InvalidArgument(f"decoding.stop[{i}]", "must not be empty")
            _check_chars(f"decoding.stop[{i}]", s, lim.max_stop_chars)

    def policy(self, p: Policy, field: str = "cache") -> None:
        if p.min_similarity is not None and not (math.isfinite(p.min_similarity) and 0.0 <= p.min_similarity <= 1.0):
            raise InvalidArgument(f"{field}.min_similarity", "must be a cosine similarity in [0, 1]")
        if p.ttl_s is not None and not 1 <= p.ttl_s <= self.limits.max_ttl_s:
            raise InvalidArgument(f"{field}.ttl_seconds", f"must be in [1, {self.limits.max_ttl_s}]")


class Admission:
    """A counter with a ceiling: over it, refuse at once instead of queueing.

    Not a semaphore on purpose: waiting is exactly the pile-up the gateway must
    not build. Callers get RESOURCE_EXHAUSTED and retry with backoff.
    """

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.in_flight = 0
        self.rejected = 0
        # Per tenant too: a tenant's Stats show its own load, not its neighbours' (the tenant
        # set is bounded by the token table; idle tenants are dropped from in_flight_by).
        self.in_flight_by: dict[str, int] = {}
        self.rejected_by: dict[str, int] = {}

    @property
    def full(self) -> bool:
        """The next :meth:`acquire` would be refused."""
        return bool(self.limit) and self.in_flight >= self.limit

    def acquire(self, tenant: str = "") -> None:
        """Take a slot or raise RESOURCE_EXHAUSTED; pair with :meth:`release`."""
        if self.limit and self.in_flight >= self.limit:
            self.rejected += 1
            self.rejected_by[tenant] = self.rejected_by.get(tenant, 0) + 1
            raise ResourceExhausted(f"{self.what}: {self.in_flight} in flight, the limit is {self.limit}; retry later")
        self.in_flight += 1
        self.in_flight_by[tenant] = self.in_flight_by.get(tenant, 0) + 1

    def release(self, tenant: str = "") -> None:
        self.in_flight -= 1
        left = self.in_flight_by.get(tenant, 1) - 1
        if left > 0:
            self.in_flight_by[tenant] = left
        else:
            self.in_flight_by.pop(tenant, None)

    @contextmanager
    def slot(self, tenant: str = "") -> Iterator[None]:
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)
