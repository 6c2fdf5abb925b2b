"""Admission and chunked prefill over real gRPC with the tiny model.

The rates are pinned (``learn=False``) so what admission decides does not depend
on how fast this machine runs the tiny model: 1,000 prefill and 10 decode tokens/s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from inference_svc.core.engine import EngineConfig
from inference_svc.core.scheduling import Rates
from inference_svc.server import InferenceApp
from reprise.common.v1 import common_pb2
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost
from reprise.rpc.tenant import TENANT_HEADER

CHUNK = 32
SLICE = 8  # prefill pass while others wait
# ~900 tokens of the tiny byte-level tokenizer: above 20 chunks, and under the classify limit (its 4,096 context
# less the ~3,000-token sentiment prefix).
LONG = "I love this phone, the battery lasts all day. I hate waiting, the service was terrible. " * 20


@pytest.fixture(scope="module")
async def host(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceHost]:
    app = InferenceApp(
        EngineConfig(
            model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"), max_new_tokens=16, prefill_chunk=CHUNK
        ),
        max_queue=16,
        prefill_slice=SLICE,
        rates=Rates(prefill_tps=1000.0, decode_tps=10.0, learn=False),
    )
    h = ServiceHost(app, ServerOptions(port=0))
    await h.start()
    yield h
    await h.stop(0)


@pytest.fixture
async def stub(host: ServiceHost) -> AsyncIterator[pb_grpc.InferenceStub]:
    async with grpc.aio.insecure_channel(host.address) as channel:
        yield pb_grpc.InferenceStub(channel)


def _chat(max_new_tokens: int) -> pb.ChatRequest:
    return pb.ChatRequest(text="Tell me a story", decoding=common_pb2.DecodingParams(max_new_tokens=max_new_tokens))


async def test_a_chat_that_cannot_finish_before_its_deadline_is_refused_at_admission(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(_chat(100), timeout=3)  # 100 new tokens at 10 tokens/s: 10 s, on an idle model
    # Refused before running, and DEADLINE_EXCEEDED rather than RESOURCE_EXHAUSTED: nothing else runs,
    # so retrying later would not help; a longer deadline would.
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline is in" in err.value.details() and "100 new tokens" in err.value.details()
    assert "longer deadline" in err.value.details()
    ok = await stub.Chat(_chat(4), timeout=30)
    assert ok.usage.completion_tokens >= 1


async def test_a_long_classify_is_priced_in_tokens(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Classify(pb.ClassifyRequest(text=LONG), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # alone on an idle model it would still be late
    assert "prompt + 0 new tokens" in err.value.details()


async def test_a_short_classify_is_not_stuck_behind_long_ones(stub: pb_grpc.InferenceStub) -> None:
    finished: list[str] = []

    async def classify(name: str, text: str) -> pb.ClassifyResponse:
        r = await stub.Classify(pb.ClassifyRequest(text=text), timeout=60)
        finished.append(name)
        return r

    alone = await classify("alone", LONG)
    longs = [asyncio.ensure_future(classify(f"long{i}", LONG)) for i in range(4)]
    await asyncio.sleep(0.02)  # the long prompts are being prefilled, a slice of 8 tokens per step
    short = await classify("short", "great phone")
    results = await asyncio.gather(*longs)
    assert finished.index("short") < len(finished) - 4  # done before any of the long ones finished
    assert short.usage.prompt_tokens - short.usage.cached_tokens <= CHUNK  # precondition: it takes the batch path
    assert alone.usage.prompt_tokens - alone.usage.cached_tokens > 20 * CHUNK  # precondition: really chunked
    for r in results:  # slices interleaved with other work give the answer of the prompt run alone in chunks
        assert r.result.label == alone.result.label
        # Passes of 8 and of 32 tokens add up in another order: bf16 activations differ in the last bits.
        assert r.result.probability == pytest.approx(alone.result.probability, abs=2e-3)
        assert r.usage == alone.usage


async def test_another_tenant_is_admitted_past_one_tenants_backlog(stub: pb_grpc.InferenceStub) -> None:
    # "flood" owes ~100 s of decoding (1,000 tokens at the pinned 10 tokens/s) while its stream runs.
    flood = stub.ChatStream(
        pb.ChatStreamRequest(text="Tell me a long story", decoding=common_pb2.DecodingParams(max_new_tokens=1000)),
        metadata=((TENANT_HEADER, "flood"),),
    )
    try:
        await flood.read()  # its first tokens are out: it is admitted and running
        quiet = await stub.Chat(_chat(4), timeout=10, metadata=((TENANT_HEADER, "quiet"),))
        assert quiet.usage.completion_tokens >= 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Chat(_chat(4), timeout=10, metadata=((TENANT_HEADER, "flood"),))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        flood.cancel()
