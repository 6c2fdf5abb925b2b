"""The model worker reports its queue and streams through the Observer it is given (the metrics are one)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from inference_svc.core.observer import NullObserver, Observer
from inference_svc.core.scheduling import Step
from inference_svc.core.worker import ModelWorker
from inference_svc.metrics import PrometheusObserver

from tests.support.observer import RecordingObserver


@pytest.mark.parametrize("implementation", [NullObserver, PrometheusObserver, RecordingObserver])
def test_every_observer_answers_every_report_of_the_protocol(implementation: type) -> None:
    reports = [name for name in vars(Observer) if not name.startswith("_")]
    assert len(reports) == 10
    for name in reports:
        assert callable(getattr(implementation(), name)), (implementation, name)


async def test_the_worker_reports_capacity_depth_and_active_streams() -> None:
    seen = RecordingObserver()
    worker = ModelWorker(max_queue=4, max_active_streams=2, observer=seen)
    assert seen.calls("queue_capacity") == [(4,)]
    release, running = threading.Event(), threading.Event()
    worker.submit(lambda _: running.set() or release.wait(5))
    worker.start()
    try:
        assert await asyncio.to_thread(running.wait, 5)
        waiting = [asyncio.ensure_future(worker.call(lambda _: 1)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert seen.calls("queue_depth")[-1] == (2,)  # both calls queued behind the one running
        release.set()
        assert await asyncio.gather(*waiting) == [1, 1]

        def tokens(_cancelled: threading.Event) -> Iterator[Step]:
            # Decode steps: each ends the stream's turn in a round, so a round ends with it still active.
            yield from (Step(decode_tokens=1, item=t) for t in "ab")

        assert [t async for t in worker.stream(tokens)] == ["a", "b"]
    finally:
        release.set()
        worker.close(timeout=5)
    assert seen.calls("queue_depth")[-1] == (0,)
    streams = [n for (n,) in seen.calls("active_streams")]
    assert 1 in streams and streams[-1] == 0
