"""Scheduling with fakes: cost and deadline admission, learned rates, tenant fairness, steps between calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from inference_svc.core.batcher import ClassifyBatcher
from inference_svc.core.scheduling import Admission, Cost, Rates, Step
from inference_svc.core.worker import ModelWorker
from reprise.errors import DeadlineExceeded, ResourceExhausted


def _fixed(prefill_tps: float = 100.0, decode_tps: float = 10.0) -> Rates:
    return Rates(prefill_tps=prefill_tps, decode_tps=decode_tps, learn=False)


# -- rates and cost ------------------------------------------------------------------


def test_cost_in_seconds_is_a_pass_plus_prompt_tokens_at_prefill_rate_plus_new_tokens_at_decode_rate() -> None:
    assert _fixed(100, 10).seconds(200, 30) == pytest.approx(0.1 + 2.0 + 3.0)  # the pass's fixed part: one decode step
    assert _fixed(100, 10).seconds(0, 30) == pytest.approx(3.0)


def test_prefill_is_learned_from_long_passes_net_of_their_fixed_part() -> None:
    rates = Rates(prefill_tps=1.0, decode_tps=10.0, learn=True)
    rates.observe("prefill", 16, 0.1)  # a short classify pass: mostly the fixed part, teaches nothing
    assert rates.prefill_tps == pytest.approx(1.0)
    rates.observe("prefill", 512, 0.1 + 0.512)  # one decode step (0.1 s) + 512 tokens at 1,000 tokens/s
    assert rates.prefill_tps == pytest.approx(1000.0)


def test_the_first_observation_replaces_the_seed_then_an_average_follows() -> None:
    rates = Rates(prefill_tps=1.0, decode_tps=1.0, alpha=0.5)
    rates.observe("decode", 10, 0.1)  # 100 tok/s
    assert rates.decode_tps == pytest.approx(100.0)
    rates.observe("decode", 1, 0.03)  # 33 tok/s: halfway between 10 ms and 30 ms per token
    assert rates.decode_tps == pytest.approx(50.0)
    assert rates.prefill_tps == pytest.approx(1.0)  # the other kind is untouched
    rates.observe("prefill", 0, 1.0)  # nothing computed: nothing learned
    assert rates.prefill_tps == pytest.approx(1.0)


# -- admission -------------------------------------------------------------------------


def test_a_request_that_cannot_finish_before_its_deadline_is_refused_saying_why() -> None:
    admission = Admission(_fixed(100, 10), headroom=1.0)
    admission.admit("a", Cost(100, 40), seconds_left=None)  # 5.1 s queued, no deadline: always admitted
    with pytest.raises(ResourceExhausted) as err:
        admission.admit("a", Cost(100, 20), seconds_left=6.0)  # 5.1 s ahead + 3.1 s of its own > 6 s
    message = str(err.value)
    assert "8.2 s" in message and "deadline is in 6.0 s" in message and "100 prompt + 20 new tokens" in message
    assert admission.admitted == 1
    assert admission.admit("a", Cost(100, 20), seconds_left=8.5) is not None
    admission.headroom = 0.8  # a request may be expected to need 80% of the time left, no more
    with pytest.raises(ResourceExhausted, match="admitted up to 80%"):
        admission.admit("b", Cost(0, 5), seconds_left=1.2)  # 0.5 s + a fair 0.5 s of a's = 1 s > 0.96 s
    assert admission.admit("b", Cost(0, 5), seconds_left=1.3) is not None


def test_a_request_too_long_for_its_deadline_even_alone_is_deadline_exceeded_not_overload() -> None:
    """Retrying later cannot help a request that an idle model could not finish in time: DEADLINE_EXCEEDED,
    saying to lengthen the deadline. With other work admitted the cause is ambiguous: RESOURCE_EXHAUSTED."""
    admission = Admission(_fixed(100, 10), headroom=1.0)
    with pytest.raises(DeadlineExceeded) as err:
        admission.admit("a", Cost(100, 40), seconds_left=3.0)  # 1.1 s prefill + 40 passes of 0.1 s = 5.1 s alone
    assert "needs 5.1 s even with nothing else running" in str(err.value) and "longer deadline" in str(err.value)
    assert admission.admitted == 0
    admission.admit("b", Cost(0, 10), None)
    with pytest.raises(ResourceExhausted):
        admission.admit("a", Cost(100, 40), seconds_left=3.0)


def test_finished_and_progressing_work_stops_counting() -> None:
    admission = Admission(_fixed(100, 10), headroom=1.0)
    first = admission.admit("a", Cost(0, 50), None)  # 5 s
    assert admission.expected_seconds("a", Cost(0, 10)) == pytest.approx(6.0)
    first.progress(decode_tokens=30)
    assert admission.expected_seconds("a", Cost(0, 10)) == pytest.approx(3.0)
    admission.release(first)
    assert admission.expected_seconds("a", Cost(0, 10)) == pytest.approx(1.0)


def test_another_tenants_backlog_delays_a_request_only_by_a_fair_share() -> None:
    admission = Admission(_fixed(100, 10), headroom=1.0)
    for _ in range(10):
        admission.admit("flood", Cost(0, 100), None)  # 100 s of work for one tenant
    # Round-robin: a 2 s request of another tenant shares the model with the flood for 2 s each.
    assert admission.expected_seconds("quiet", Cost(0, 20)) == pytest.approx(4.0)
    assert admission.admit("quiet", Cost(0, 20), seconds_left=5.0) is not None
    with pytest.raises(ResourceExhausted):
        admission.admit("flood", Cost(0, 20), seconds_left=5.0)


# -- the worker: steps, rates, fairness ----------------------------------------------------


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    w = ModelWorker(max_queue=16, max_active_streams=1, rates=Rates(prefill_tps=1.0, decode_tps=1.0))
    w.start()
    yield w
    w.close(timeout=5)


def _blocker(worker: ModelWorker) -> threading.Event:
    release, running = threading.Event(), threading.Event()

    def hold(_cancelled: threading.Event) -> None:
        running.set()
        release.wait(5)

    worker.submit(hold)
    assert running.wait(5)
    return release


async def test_steps_are_timed_into_the_rates_counted_on_the_ticket_and_only_items_delivered(worker: ModelWorker) -> None:
    admission = Admission(worker.rates)
    ticket = admission.admit("a", Cost(64, 2), None)

    def steps(_cancelled: threading.Event) -> Iterator[Step]:
        yield Step(prefill_tokens=32)
        yield Step(prefill_tokens=32)
        yield Step(decode_tokens=1, item="x")
        yield Step(decode_tokens=1)  # a token that added no text yet
        yield Step(item="end")

    assert [i async for i in worker.stream(steps, "a", ticket)] == ["x", "end"]
    assert (ticket.prefill_left, ticket.decode_left) == (0, 0)
    assert worker.rates.decode_tps > 1000  # learned: the fake steps are instant (32-token chunks teach prefill nothing)


async def test_waiting_streams_take_free_slots_round_robin_between_tenants(worker: ModelWorker) -> None:
    started: list[str] = []

    def named(name: str):  # type: ignore[no-untyped-def]
        def run(_cancelled: threading.Event) -> Iterator[str]:
            started.append(name)
            yield name

        return run

    async def drain(name: str, tenant: str) -> list[str]:
        return [i async for i in worker.stream(named(name), tenant)]

    release = _blocker(worker)
    tasks = []
    for name, tenant in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b")]:
        tasks.append(asyncio.ensure_future(drain(name, tenant)))
        await asyncio.sleep(0.01)  # queued in this order
    release.set()
    await asyncio.gather(*tasks)
    assert started == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_a_call_runs_between_any_two_steps_even_with_several_streams_active() -> None:
    w = ModelWorker(max_queue=16, max_active_streams=2)
    events: list[str] = []
    at_first_step, queued = threading.Event(), threading.Event()

    def chunks(name: str):  # type: ignore[no-untyped-def]
        def run(_cancelled: threading.Event) -> Iterator[Step]:
            for i in range(2):
                events.append(f"{name}{i}")
                if name == "long" and i == 0:
                    at_first_step.set()
                    assert queued.wait(5)
                yield Step(prefill_tokens=8)
            yield Step(item=name)

        return run

    w.start()
    try:
        long = asyncio.ensure_future(_collect(w, chunks("long")))
        other = asyncio.ensure_future(_collect(w, chunks("other")))
        assert await asyncio.to_thread(at_first_step.wait, 5)
        call = asyncio.ensure_future(w.call(lambda _: events.append("call")))
        await asyncio.sleep(0.01)
        queued.set()
        await asyncio.gather(long, other, call)
    finally:
        w.close(timeout=5)
    # The call queued during long's first chunk runs before the other stream's step, not after it.
    assert events.index("call") == events.index("long0") + 1


async def _collect(w: ModelWorker, fn) -> list[object]:  # type: ignore[no-untyped-def]
    return [i async for i in w.stream(fn)]


async def test_a_classify_batch_takes_waiting_requests_round_robin_between_tenants(worker: ModelWorker) -> None:
    batches: list[list[str]] = []

    def compute(texts: Sequence[str]) -> list[str]:
        batches.append(list(texts))
        return list(texts)

    batcher: ClassifyBatcher[str] = ClassifyBatcher(worker, compute, max_batch=2, max_wait_s=0.0)
    release = _blocker(worker)
    order = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]
    tasks = [asyncio.ensure_future(batcher.classify(text, tenant, tokens=64)) for text, tenant in order]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert batches[0] == ["a1", "b1"]  # b1 is not left for a later pass behind a's burst
    assert sorted(t for b in batches[1:] for t in b) == ["a2", "a3"]
    assert worker.rates.prefill_tps > 1.0  # the passes' token counts and durations were learned


def test_a_short_classify_waits_only_for_other_short_ones_and_the_step_in_progress() -> None:
    admission = Admission(_fixed(100, 10), headroom=1.0)
    admission.admit("a", Cost(2000, 0), None)  # long prompts, prefilled in steps: 20.1 s
    admission.admit("a", Cost(0, 100), None)  # a chat: 10 s
    admission.admit("a", Cost(20, 0), None, express=True)  # a short classify already waiting: 0.3 s
    # Batched short classifies run between any two steps: 0.3 s queued + 0.3 s own + a 128-token step (1.38 s).
    assert admission.expected_seconds("a", Cost(20), express=True, step_tokens=128) == pytest.approx(0.3 + 0.3 + 1.38)
    assert admission.admit("a", Cost(20), 5.0, express=True, step_tokens=128) is not None
    with pytest.raises(ResourceExhausted):  # the same work in turn with the streams would take 30 s
        admission.admit("a", Cost(20), 5.0)
