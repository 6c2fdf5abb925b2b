"""Image + text chats through real servers: gateway -> cache (real Redis, keyed by pixels) -> inference (tiny Qwen2-VL)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import grpc
import pytest
from gateway_support import eventually, start_gateway_host, unique

from gateway.sdk import AsyncClient, ClientOptions
from inference_svc.core.engine import EngineConfig
from inference_svc.server import InferenceApp
from reprise.errors import ServiceError
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost

from tests.support.tiny_vl_model import build_tiny_vl_model, png

EXACT, MISS = pb.CACHE_STATUS_EXACT, pb.CACHE_STATUS_MISS
GREEDY = {"temperature": 0.0, "max_new_tokens": 8}
RED = png((200, 10, 10), mark=20)


def _recompressed(data: bytes) -> bytes:
    """The same picture saved again with other PNG settings: other bytes, same pixels."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, format="PNG", compress_level=0)
    assert out.getvalue() != data
    return out.getvalue()


@pytest.fixture(scope="module")
async def vl_inference(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceHost]:
    model = build_tiny_vl_model(tmp_path_factory.mktemp("gw-vl") / "qwen2-vl")
    app = InferenceApp(EngineConfig(model=str(model), cache_dir=tmp_path_factory.mktemp("gw-vl-cache"), max_new_tokens=8))
    host = ServiceHost(app, ServerOptions(port=0))
    await host.start()
    yield host
    await host.stop(0)


@pytest.fixture(scope="module")
async def vl_gateway(cache_host: ServiceHost, vl_inference: ServiceHost) -> AsyncIterator[ServiceHost]:
    host = await start_gateway_host(cache_host.address, vl_inference.address)
    yield host
    await host.stop(0)


@pytest.fixture
def stub(vl_gateway: ServiceHost, channel_to) -> pb_grpc.GatewayStub:  # type: ignore[no-untyped-def]
    return pb_grpc.GatewayStub(channel_to(vl_gateway))


async def test_image_chat_streams_then_hits_for_the_same_picture_and_misses_for_another(stub) -> None:  # type: ignore[no-untyped-def]
    text = unique("What is in this picture?")
    request = pb.ChatStreamRequest(text=text, images=[RED], decoding=GREEDY)
    messages = [m async for m in stub.ChatStream(request)]
    assert messages[0].cache.status == MISS and messages[0].cache.store
    assert messages[-1].HasField("finish_reason") and messages[-1].usage.completion_tokens > 0
    reply = "".join(m.delta for m in messages)
    assert reply and messages[-1].usage.prompt_tokens > 0

    # The same picture (re-encoded: the cache keys pixels, not bytes) and text: served from the cache.
    again = pb.ChatRequest(text=text, images=[_recompressed(RED)], decoding=GREEDY)
    hit = await eventually(lambda: stub.Chat(again), lambda r: r.cache.status == EXACT)
    assert hit.reply == reply and hit.cache.key == messages[0].cache.key
    # The stream repeats the first request exactly: until the gateway has the cache's reply to its
    # write-back (the entry can be visible to the Chat above before that reply arrives), it joins
    # the first request's finished flow instead (MISS, coalesced; the same reply, no model run).
    async def streamed() -> list[pb.ChatStreamResponse]:
        return [m async for m in stub.ChatStream(request)]

    streamed_hit = await eventually(streamed, lambda ms: ms[0].cache.status == EXACT or not ms[0].cache.coalesced)
    assert streamed_hit[0].cache.status == EXACT and "".join(m.delta for m in streamed_hit) == reply

    # Another picture, or none, with the same text: other requests, computed by the model.
    other = await stub.Chat(pb.ChatRequest(text=text, images=[png((10, 200, 10), mark=20)], decoding=GREEDY))
    assert other.cache.status == MISS and other.cache.key != hit.cache.key
    text_only = await stub.Chat(pb.ChatRequest(text=text, decoding=GREEDY))
    assert text_only.cache.status == MISS and text_only.cache.key not in (hit.cache.key, other.cache.key)


async def test_history_with_an_image_message(stub) -> None:  # type: ignore[no-untyped-def]
    history = [{"role": "ROLE_USER", "content": "hello"}, {"role": "ROLE_ASSISTANT", "content": "hi, how can I help?"}]
    r = await stub.Chat(pb.ChatRequest(text=unique("And this picture?"), history=history, images=[RED], decoding=GREEDY))
    assert r.cache.status == MISS and r.finish_reason


@pytest.mark.parametrize(
    "images, field, words",
    [
        ([b"\x89PNG but not really"], "images[0]", "not a decodable image"),  # refused by the gateway itself
        ([RED[: len(RED) // 2]], "images[0]", "not a decodable image"),  # header fine, data cut: refused downstream
        ([RED] * 9, "images", "the limit is 8"),
    ],
    ids=["garbage", "truncated", "too-many"],
)
async def test_bad_images_are_invalid_argument(stub, images, field, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(pb.ChatRequest(text=unique("What is this?"), images=images, decoding=GREEDY))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details() and words in err.value.details()


async def test_pictures_do_not_count_against_the_request_size_cap(stub) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    noisy = Image.effect_noise((400, 400), 80).convert("RGB")  # noise does not compress: ~480 KB of PNG
    out = io.BytesIO()
    noisy.save(out, format="PNG")
    assert len(out.getvalue()) > 256 * 1024  # over the 256 KiB cap of the rest of a request
    r = await stub.Chat(pb.ChatRequest(text=unique("Describe the noise"), images=[out.getvalue()], decoding=GREEDY))
    assert r.finish_reason


async def test_a_text_only_model_says_it_takes_no_images(gateway_host: ServiceHost, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GatewayStub(channel_to(gateway_host))  # the session's gateway serves the tiny text-only Qwen2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(pb.ChatRequest(text=unique("What is in this picture?"), images=[RED]))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "takes no images" in err.value.details()
    # ModelInfo said so: the gateway refused itself, before the cache decoded a pixel.
    assert err.value.details().startswith("images: model ")


async def test_the_sdk_sends_images(vl_gateway: ServiceHost) -> None:
    async with AsyncClient(ClientOptions(vl_gateway.address)) as client:
        text = unique("What is in this picture?")
        first = await client.chat(text, images=[RED])
        assert first.cache.status.value == "miss"
        pieces = [d async for d in client.chat_stream(text, images=[RED])]
        assert "".join(p.delta for p in pieces) == first.reply
        with pytest.raises(ServiceError) as err:
            await client.chat(text, images=[b"nope"])
        assert err.value.code == "INVALID_ARGUMENT"


