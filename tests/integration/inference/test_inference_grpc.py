"""The inference service over real gRPC on loopback with the tiny model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from inference_svc.core import prompts
from inference_svc.core.engine import EngineConfig
from inference_svc.core.scheduling import Rates
from inference_svc.core.service import Batching
from inference_svc.server import InferenceApp
from reprise.common.v1 import common_pb2
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost

from tests.support.cpu import int8_kernel_name


@pytest.fixture(scope="module")
async def host(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceHost]:
    app = InferenceApp(
        EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"), max_new_tokens=16),
        max_queue=4,
        batching=Batching(max_batch=16, max_wait_ms=20),
        # Priced as if free, so admission lets every request in: these tests are about what happens after
        # (deadlines, cancellation); refusal at admission is tested in test_inference_scheduling_grpc.py.
        rates=Rates(prefill_tps=1e9, decode_tps=1e9, learn=False),
    )
    h = ServiceHost(app, ServerOptions(port=0))
    await h.start()
    yield h
    await h.stop(0)


@pytest.fixture
async def stub(host: ServiceHost) -> AsyncIterator[pb_grpc.InferenceStub]:
    async with grpc.aio.insecure_channel(host.address) as channel:
        yield pb_grpc.InferenceStub(channel)


def _generated() -> float:
    return REGISTRY.get_sample_value("reprise_inference_generated_tokens_total") or 0.0


async def test_concurrent_classify_is_batched_and_matches_one_at_a_time(stub: pb_grpc.InferenceStub) -> None:
    texts = [f"I think product number {i} is {'great' if i % 2 else 'awful'}" for i in range(16)]
    alone = [await stub.Classify(pb.ClassifyRequest(text=t)) for t in texts[:3]]
    together = await asyncio.gather(*(stub.Classify(pb.ClassifyRequest(text=t)) for t in texts))
    assert max(r.batch_size for r in together) > 1
    for a, b in zip(alone, together):
        assert a.result.label == b.result.label
        assert a.result.probability == pytest.approx(b.result.probability, abs=2e-2)  # bf16 batch shapes round differently
    assert all(r.usage.cached_tokens > 0 and r.usage.prompt_tokens > r.usage.cached_tokens for r in together)


async def test_full_queue_is_resource_exhausted(host: ServiceHost, stub: pb_grpc.InferenceStub) -> None:
    app: InferenceApp = host.app  # type: ignore[assignment]
    release = threading.Event()
    app.worker.submit(lambda _: release.wait(10))
    # Chats fill the free decode slots first, then the queue: capacity is slots + queue, whatever the timing.
    capacity = app.worker.max_active_streams + app.worker.max_queue
    calls = [stub.Chat(pb.ChatRequest(text=f"hi {i}")) for i in range(capacity)]
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Chat(pb.ChatRequest(text="one too many"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
    assert all(r.usage.completion_tokens > 0 for r in await asyncio.gather(*calls))


async def test_cancelled_stream_stops_decoding(stub: pb_grpc.InferenceStub) -> None:
    request = pb.ChatStreamRequest(
        text="Tell me a long story", decoding=common_pb2.DecodingParams(max_new_tokens=300)
    )
    whole = await stub.Chat(pb.ChatRequest(text=request.text, decoding=request.decoding))
    assert whole.finish_reason == common_pb2.FINISH_REASON_LENGTH  # precondition: no early end-of-turn
    before = _generated()
    call = stub.ChatStream(pb.ChatStreamRequest(text=request.text, decoding=common_pb2.DecodingParams(max_new_tokens=1000)))
    async for _ in call:
        call.cancel()
        break
    await asyncio.sleep(0.3)
    ok = await stub.Classify(pb.ClassifyRequest(text="the worker is free again"), timeout=5)
    assert ok.batch_size >= 1
    assert _generated() - before < 300


async def test_deadline_stops_decoding(stub: pb_grpc.InferenceStub) -> None:
    before = _generated()
    request = pb.ChatStreamRequest(text="Tell me a long story", decoding=common_pb2.DecodingParams(max_new_tokens=1000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.ChatStream(request, timeout=0.2):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.3)
    await stub.Classify(pb.ClassifyRequest(text="still serving"), timeout=5)
    assert _generated() - before < 1000


async def test_stream_deltas_join_to_the_chat_reply_with_usage_on_the_last(stub: pb_grpc.InferenceStub) -> None:
    decoding = common_pb2.DecodingParams(max_new_tokens=12)
    whole = await stub.Chat(pb.ChatRequest(text="What is a cache?", decoding=decoding))
    parts = [m async for m in stub.ChatStream(pb.ChatStreamRequest(text="What is a cache?", decoding=decoding))]
    assert "".join(m.delta for m in parts) == whole.reply
    assert parts[-1].HasField("finish_reason") and not any(m.HasField("finish_reason") for m in parts[:-1])
    assert parts[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert parts[-1].usage.cached_tokens >= whole.usage.prompt_tokens - 1  # the same prompt: all but the last token


async def test_multi_turn_reports_cached_tokens(stub: pb_grpc.InferenceStub) -> None:
    first = await stub.Chat(pb.ChatRequest(text="Name a colour", decoding=common_pb2.DecodingParams(max_new_tokens=6)))
    history = [
        common_pb2.Turn(role=common_pb2.ROLE_USER, content="Name a colour"),
        common_pb2.Turn(role=common_pb2.ROLE_ASSISTANT, content=first.reply or "blue"),
    ]
    second = await stub.Chat(pb.ChatRequest(text="Another", history=history))
    assert second.usage.cached_tokens >= first.usage.prompt_tokens


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.ChatRequest(text=" "), "text"),
        (pb.ChatRequest(text="hi", decoding=common_pb2.DecodingParams(max_new_tokens=0)), "decoding.max_new_tokens"),
        (pb.ChatRequest(text="hi", decoding=common_pb2.DecodingParams(temperature=3)), "decoding.temperature"),
        (pb.ChatRequest(text="hi", decoding=common_pb2.DecodingParams(min_p=1.5)), "decoding.min_p"),
        (pb.ChatRequest(text="hi", decoding=common_pb2.DecodingParams(repetition_penalty=0)), "decoding.repetition_penalty"),
        (pb.ChatRequest(text="hi", decoding=common_pb2.DecodingParams(stop=[""])), "decoding.stop[0]"),
        (pb.ChatRequest(text="hi", history=[common_pb2.Turn(role=common_pb2.ROLE_ASSISTANT, content="x")]), "history[0].role"),
    ],
)
async def test_bad_requests_name_the_field(stub: pb_grpc.InferenceStub, request_: pb.ChatRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


async def test_model_info_reports_model_placement_and_kv(stub: pb_grpc.InferenceStub) -> None:
    info = await stub.ModelInfo(pb.ModelInfoRequest())
    assert info.architecture == "Qwen2ForCausalLM" and info.revision
    assert info.prompts_revision == prompts.revision(prompts.SENTIMENT, prompts.CHAT_SYSTEM_PROMPT)
    # bf16 CPUs serve int4/int8/dense under bf16; others int4 (AVX2 kernel), fp16 (fbgemm) or dense under fp32.
    assert (info.weights, info.dtype) in {
        ("int4", "bfloat16"), ("int8", "bfloat16"), ("dense", "bfloat16"), ("int4", "float32"), ("fp16", "float32"), ("dense", "float32")
    }
    if (info.weights, info.dtype) == ("int4", "float32"):
        assert info.int4_kernel == int8_kernel_name()  # --activations auto: int8 where int4 serves under fp32
    assert info.decode_ops == "reprise-c"  # the suite has a C compiler (make test installs one)
    assert list(info.cpus) and info.threads >= 1
    assert info.kv_cache_budget_bytes > 0 and info.kv_cache_entries >= 1  # the pinned system prompt
    assert info.decode_bytes_per_token > 0
