"""Micro-batching: concurrent requests share passes, waits are bounded, failures are per request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from inference_svc.core.batcher import ClassifyBatcher
from inference_svc.core.worker import ModelWorker
from reprise.errors import InvalidArgument, ResourceExhausted


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    w = ModelWorker(max_queue=8)
    w.start()
    yield w
    w.close(timeout=5)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> list[object]:
        self.batches.append(list(texts))
        return [InvalidArgument("text", "bad") if t == "bad" else t.upper() for t in texts]


async def test_concurrent_requests_share_one_pass(worker: ModelWorker) -> None:
    compute = Recorder()
    batcher = ClassifyBatcher(worker, compute, max_batch=16, max_wait_s=0.05)
    results = await asyncio.gather(*(batcher.classify(f"t{i}") for i in range(10)))
    assert [r.value for r in results] == [f"T{i}" for i in range(10)]
    assert len(compute.batches) == 1 and all(r.batch_size == 10 for r in results)


async def test_batches_are_capped_and_the_rest_follow(worker: ModelWorker) -> None:
    compute = Recorder()
    batcher = ClassifyBatcher(worker, compute, max_batch=4, max_wait_s=0.02)
    results = await asyncio.gather(*(batcher.classify(f"t{i}") for i in range(10)))
    assert sorted(len(b) for b in compute.batches) == [2, 4, 4]
    assert [r.value for r in results] == [f"T{i}" for i in range(10)]


async def test_a_lone_request_waits_only_the_bound(worker: ModelWorker) -> None:
    batcher = ClassifyBatcher(worker, Recorder(), max_batch=16, max_wait_s=0.01)
    start = time.perf_counter()
    result = await batcher.classify("alone")
    assert result.value == "ALONE" and result.batch_size == 1
    assert time.perf_counter() - start < 1.0


async def test_one_bad_text_fails_only_its_request(worker: ModelWorker) -> None:
    batcher = ClassifyBatcher(worker, Recorder(), max_wait_s=0.02)
    good, bad = await asyncio.gather(batcher.classify("ok"), batcher.classify("bad"), return_exceptions=True)
    assert good.value == "OK" and isinstance(bad, InvalidArgument)


async def test_a_crashing_pass_fails_its_requests_and_the_next_pass_works(worker: ModelWorker) -> None:
    calls = []

    def flaky(texts: Sequence[str]) -> list[str]:
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("kernel exploded")
        return list(texts)

    batcher = ClassifyBatcher(worker, flaky, max_wait_s=0.001)
    with pytest.raises(RuntimeError):
        await batcher.classify("first")
    assert (await batcher.classify("second")).value == "second"


async def test_pending_limit_gives_resource_exhausted(worker: ModelWorker) -> None:
    release = threading.Event()
    worker.submit(lambda _: release.wait(5))
    batcher = ClassifyBatcher(worker, Recorder(), max_pending=2)
    waiting = [asyncio.ensure_future(batcher.classify(f"t{i}")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted):
        await batcher.classify("one too many")
    release.set()
    assert [r.value for r in await asyncio.gather(*waiting)] == ["T0", "T1"]


async def test_cancelled_requests_are_skipped(worker: ModelWorker) -> None:
    compute = Recorder()
    release = threading.Event()
    worker.submit(lambda _: release.wait(5))
    batcher = ClassifyBatcher(worker, compute, max_wait_s=0.001)
    gone = asyncio.ensure_future(batcher.classify("gone"))
    kept = asyncio.ensure_future(batcher.classify("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert (await kept).value == "KEPT"
    assert compute.batches == [["kept"]]
