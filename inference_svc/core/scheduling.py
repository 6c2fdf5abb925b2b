"""Admission by cost and deadline, fair between tenants, with rates learned from the worker's own timings.

Every request is priced in tokens before it queues: the prompt's tokens (prefill)
plus the most it may generate (decode). :class:`Rates` turns tokens into seconds
with prefill and decode throughputs measured online on the model worker, and
:class:`Admission` keeps what every admitted, unfinished request still owes.

A request is refused at once (``ResourceExhausted``, saying why) when it is not
expected to *finish* before its deadline: a request admitted only to run into
its deadline costs the model work that nobody reads, and the caller learns late
what it could have learned at once. The worker serves tenants round-robin, so a
tenant's request does not wait for all queued work: it shares the model with
each other tenant until that tenant's work runs out (processor sharing), which
is what :meth:`Admission.expected_seconds` adds up.

Nothing here knows about gRPC; the servicer passes the tenant and the seconds
left before the deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from reprise.errors import DeadlineExceeded, ResourceExhausted

#: The tenant of a request that names none (direct callers, tests, warm-up).
DEFAULT_TENANT = "-"


@dataclass(frozen=True)
class Cost:
    """What a request asks of the model, in tokens."""

    prefill_tokens: int
    decode_tokens: int = 0


class BatchPart(Protocol):
    """A stream's share of a pass the worker runs for several streams at once (continuous batching).

    A stream yields a :class:`Step` carrying one and is resumed after the worker has called
    ``run(parts)`` once with the parts of every stream waiting on the same ``run`` (one decode
    row per stream: one forward pass for all of them). ``run`` fills each part's result.
    """

    #: Runs the parts of one pass; raising fails every stream in it.
    run: Callable[[Sequence[Any]], None]


@dataclass(frozen=True)
class Step:
    """One step of a stream on the worker: what it computed, and the item to hand the caller (if any).

    Streams yield these so the worker can time prefill chunks and decode steps
    (:class:`Rates`) and count down the request's :class:`Ticket` between them.
    ``batch``: the stream waits for a pass it shares with other streams (:class:`BatchPart`)
    before its next step.
    """

    prefill_tokens: int = 0
    decode_tokens: int = 0
    item: Any = None
    batch: BatchPart | None = None


class Rates:
    """Prefill and decode throughput (tokens/s), an exponential moving average of observed steps.

    A forward pass costs a fixed part (reading every weight once, about one decode
    step on a memory-bound CPU) plus a part per token. A 16-token classify pass is
    mostly the fixed part: priced per token it would make prefill look ~30x slower
    than a 512-token chunk runs. So a prefill pass is priced as one decode step plus
    its tokens at the prefill rate, and the prefill rate is learned only from passes
    of at least ``MIN_PREFILL_TOKENS``, net of that step.

    Two averages are kept per kind, a quick one (``alpha``) and a slow one
    (``alpha / 10``), and work is priced at the slower of the two: when the machine
    slows down (other processes on the cores) the quick one follows within a few
    steps, and when it speeds up the slow one keeps admission careful for a while,
    because a request admitted on a rate that does not last runs into its deadline.

    Decode runs batched (every active stream advances one token per pass): the decode
    rate is the worker's aggregate, tokens of all streams over the time of their passes,
    which is what the sum of everyone's outstanding work is priced at. One stream cannot
    decode faster than one pass per token, so the time of a pass (``step_seconds``) is
    kept too: it bounds how soon a single request's reply can be done.

    The first observation of each kind replaces the seed: the seeds are guesses for
    a model nothing has been measured on yet. ``learn=False`` keeps the seeds (tests).
    """

    MIN_PREFILL_TOKENS = 64

    def __init__(self, prefill_tps: float = 400.0, decode_tps: float = 20.0, alpha: float = 0.2, learn: bool = True) -> None:
        # seconds per token: (quick, slow) average per kind
        self._avg = {"prefill": [1.0 / prefill_tps] * 2, "decode": [1.0 / decode_tps] * 2}
        self._spt = {"prefill": 1.0 / prefill_tps, "decode": 1.0 / decode_tps}  # what work is priced at
        self._seen = {"prefill": not learn, "decode": not learn, "step": not learn}
        # seconds per decode pass (quick, slow): the seed is one token at the seeded decode rate
        self._avg["step"] = [1.0 / decode_tps] * 2
        self._spt["step"] = 1.0 / decode_tps
        self._alphas = (alpha, alpha / 10)
        self._learn = learn
        self._lock = threading.Lock()

    @property
    def prefill_tps(self) -> float:
        return 1.0 / self._spt["prefill"]

    @property
    def decode_tps(self) -> float:
        return 1.0 / self._spt["decode"]

    @property
    def step_seconds(self) -> float:
        """Seconds one decode pass takes (each stream in it advances one token)."""
        return self._spt["step"]

    def observe(self, kind: str, tokens: int, seconds: float) -> None:
        """``tokens`` of ``kind`` ("prefill" or "decode") took ``seconds`` on the worker.

        A "decode" observation is one pass: ``tokens`` streams advanced one token each.
        """
        if not self._learn or tokens <= 0 or seconds <= 0:
            return
        if kind == "prefill":
            if tokens < self.MIN_PREFILL_TOKENS:
                return
            seconds = max(seconds - self._spt["decode"], seconds / 2)  # net of the pass's fixed part
        if kind == "decode":
            self._average("step", seconds)
        self._average(kind, seconds / tokens)

    def _average(self, kind: str, spt: float) -> None:
        with self._lock:
            avg = self._avg[kind]
            for i, a in enumerate(self._alphas):
                avg[i] = avg[i] + a * (spt - avg[i]) if self._seen[kind] else spt
            self._spt[kind] = max(avg)
            self._seen[kind] = True

    def seconds(self, prefill_tokens: int, decode_tokens: int) -> float:
        """Model time for ``prefill_tokens`` in one pass (its fixed part priced as a decode step) and the decode."""
        fixed = self._spt["decode"] if prefill_tokens else 0.0
        return fixed + prefill_tokens * self._spt["prefill"] + decode_tokens * self._spt["decode"]

    def latency(self, prefill_tokens: int, decode_tokens: int) -> float:
        """The least time a request of this cost takes however little else runs: its prefill, one pass per token."""
        return self.seconds(prefill_tokens, 0) + decode_tokens * self._spt["step"]


@dataclass(eq=False)
class Ticket:
    """An admitted request's place in the books; the worker counts it down as steps finish."""

    tenant: str
    cost: Cost
    #: Runs between any two steps of the streams (a short classify's batch), not in turn with them.
    express: bool = False
    prefill_left: int = field(init=False)
    decode_left: int = field(init=False)

    def __post_init__(self) -> None:
        self.prefill_left = self.cost.prefill_tokens
        self.decode_left = self.cost.decode_tokens

    def progress(self, prefill_tokens: int = 0, decode_tokens: int = 0) -> None:
        # Written by the worker thread, read under Admission's lock: a stale read only
        # overestimates the work left, which errs on the side of refusing.
        self.prefill_left = max(0, self.prefill_left - prefill_tokens)
        self.decode_left = max(0, self.decode_left - decode_tokens)


class Admission:
    """The books of admitted work, and the decision to admit more."""

    def __init__(self, rates: Rates, headroom: float = 0.8) -> None:
        """``headroom``: the share of the time left a request may be expected to need.

        The rest absorbs what the estimate cannot see coming: the machine slowing down
        while the request runs (other processes on the cores, the CPU spent refusing a
        burst). In an early bench run admitting up to the whole deadline, 7 of 35 chats
        with 20 s deadlines ran late.
        """
        self.rates = rates
        self.headroom = headroom
        self._lock = threading.Lock()
        self._tickets: set[Ticket] = set()

    def outstanding(self, express_only: bool = False) -> dict[str, float]:
        """Seconds of work each tenant's admitted, unfinished requests still owe."""
        owed: dict[str, float] = {}
        with self._lock:
            for t in self._tickets:
                if t.express or not express_only:
                    owed[t.tenant] = owed.get(t.tenant, 0.0) + self.rates.seconds(t.prefill_left, t.decode_left)
        return owed

    def expected_seconds(self, tenant: str, cost: Cost, express: bool = False, step_tokens: int = 0) -> float:
        """When a new request of ``tenant`` is expected to finish, from now, if admitted.

        Tenants share the model round-robin: the request finishes after its own
        tenant's queued work and its own, and meanwhile every other tenant gets
        as much model time as that, or less if its work runs out first.
        An ``express`` request (a short classify batch) runs before the next stream
        step: it waits for the step in progress (``step_tokens`` of prefill at most)
        and the other express work only.
        """
        own = self.rates.seconds(cost.prefill_tokens, cost.decode_tokens)
        if express:
            return sum(self.outstanding(express_only=True).values()) + own + self.rates.seconds(step_tokens, 0)
        owed = self.outstanding()
        mine = owed.pop(tenant, 0.0) + own
        shared = mine + sum(min(w, mine) for w in owed.values())
        # Work is priced at the batched (aggregate) decode rate; a reply still takes a pass per token.
        return max(shared, self.rates.latency(cost.prefill_tokens, cost.decode_tokens))

    def admit(
        self, tenant: str, cost: Cost, seconds_left: float | None, express: bool = False, step_tokens: int = 0
    ) -> Ticket:
        """A ticket for the request, or ``ResourceExhausted`` when it cannot finish within ``seconds_left``."""
        self.check(tenant, cost, seconds_left, express, step_tokens)
        ticket = Ticket(tenant, cost, express)
        with self._lock:
            self._tickets.add(ticket)
        return ticket

    def check(
        self, tenant: str, cost: Cost, seconds_left: float | None, express: bool = False, step_tokens: int = 0
    ) -> None:
        """Refuses a request of ``cost`` that cannot finish within ``seconds_left``; admits nothing.

        ``DeadlineExceeded`` when nothing else is admitted and the request alone cannot finish in time
        (retrying will not help; a longer deadline or fewer new tokens will); ``ResourceExhausted`` when
        there is other work (retry later: the rates priced under load may be pessimistic for a lone request).
        """
        if seconds_left is None:
            return
        r = self.rates
        alone = r.latency(cost.prefill_tokens, cost.decode_tokens)
        if alone > seconds_left * self.headroom and not self.admitted:
            raise DeadlineExceeded(
                f"needs {alone:.1f} s even with nothing else running but the deadline is in {seconds_left:.1f} s "
                f"(admitted up to {self.headroom:.0%} of it) (this request: {cost.prefill_tokens} prompt + "
                f"{cost.decode_tokens} new tokens; measured {r.prefill_tps:.0f} prefill tokens/s, "
                f"{1 / r.step_seconds:.1f} decode steps/s); use a longer deadline or fewer max_new_tokens"
            )
        expected = self.expected_seconds(tenant, cost, express, step_tokens)
        if expected > seconds_left * self.headroom:
            raise ResourceExhausted(
                f"expected to finish in {expected:.1f} s but the deadline is in {seconds_left:.1f} s "
                f"(admitted up to {self.headroom:.0%} of it) "
                f"(this request: {cost.prefill_tokens} prompt + {cost.decode_tokens} new tokens; measured "
                f"{r.prefill_tps:.0f} prefill and {r.decode_tps:.1f} decode tokens/s; work already queued); "
                "retry later, with a longer deadline, or with fewer max_new_tokens"
            )

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.discard(ticket)

    @property
    def admitted(self) -> int:
        return len(self._tickets)
