"""EmbedQueue: concurrent lookups share embedder calls; each caller gets its own text's vector."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from cache_svc.core.embedders import EmbedQueue

pytestmark = pytest.mark.unit


class Recorder:
    name, dim = "recorder", 4

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.release.wait(5)
        if self.fail_on in texts:
            raise RuntimeError("embedder broke")
        return np.asarray([[len(t), 0, 0, 0] for t in texts], dtype=np.float32)


async def test_a_burst_is_embedded_in_batches_and_each_caller_gets_its_own_vector() -> None:
    rec = Recorder()
    queue = EmbedQueue(rec, max_batch=8)
    texts = ["same", "same"] + [f"text {'x' * i}" for i in range(11)]  # 13 callers, one text twice
    tasks = [asyncio.create_task(queue.embed(t)) for t in texts]
    await asyncio.sleep(0.05)  # the first call is under way, the rest wait for the next
    rec.release.set()
    rows = await asyncio.gather(*tasks)
    assert [int(r[0]) for r in rows] == [len(t) for t in texts]
    assert [len(c) for c in rec.calls] == [7, 5]  # 8 callers then 5; "same" embedded once


async def test_a_failed_call_fails_its_callers_and_the_queue_goes_on() -> None:
    rec = Recorder(fail_on="bad")
    rec.release.set()
    queue = EmbedQueue(rec)
    with pytest.raises(RuntimeError):
        await queue.embed("bad")
    assert int((await queue.embed("good"))[0]) == 4


async def test_worker_threads_share_the_queue_and_never_starve_it() -> None:
    """Verification threads embed words through the queue: their calls batch together, and the
    queue's own thread embeds even when every thread of the loop's shared pool waits on it."""
    from cache_svc.core.embedders import QueuedEmbedder

    rec = Recorder()
    queue = EmbedQueue(rec, max_batch=64)
    words = QueuedEmbedder(queue, asyncio.get_running_loop())
    threads = 40  # more than the default pool's workers: all of them block in words.embed
    calls = [asyncio.to_thread(words.embed, [f"w{i}", "shared"]) for i in range(threads)]
    pending = asyncio.gather(*calls)
    await asyncio.sleep(0.1)
    rec.release.set()
    rows = await asyncio.wait_for(pending, 10)
    assert [r[:, 0].tolist() for r in rows] == [[len(f"w{i}"), 6] for i in range(threads)]
    assert len(rec.calls) < threads  # batched: far fewer embedder calls than callers
    # On the loop's own thread it must not block on itself: it embeds directly.
    assert words.embed(["direct"])[0, 0] == 6
    queue.close()


async def test_callers_that_gave_up_while_waiting_are_not_embedded() -> None:
    """Under overload, lookups whose deadline passed while queued cost no embedding."""
    rec = Recorder()
    queue = EmbedQueue(rec, max_batch=8)
    first = asyncio.create_task(queue.embed("running"))
    await asyncio.sleep(0.05)  # the first call is under way; the rest queue behind it
    waiting = [asyncio.create_task(queue.embed(f"queued {i}")) for i in range(6)]
    await asyncio.sleep(0)
    for task in waiting[:4]:
        task.cancel()  # their callers went away (deadline, client cancelled)
    rec.release.set()
    assert int((await first)[0]) == len("running")
    assert [int(r[0]) for r in await asyncio.gather(*waiting[4:])] == [len("queued 4"), len("queued 5")]
    assert rec.calls == [["running"], ["queued 4", "queued 5"]]
