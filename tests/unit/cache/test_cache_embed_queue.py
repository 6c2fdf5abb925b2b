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
