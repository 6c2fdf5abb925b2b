"""Images in the gateway's flow (fakes): checked before any work, keyed by their digests, passed to inference,
and never held as bytes by the hot layer."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest
from gateway_fakes import FakeCache, FakeInference

from gateway.core.flow import Gateway, GatewayConfig
from gateway.core.hot import HotConfig, HotLayer
from gateway.core.types import CachedEntry, CacheRequest, CacheStatus, ModelIdentity, Policy, Prompt
from reprise.domain import Answer, Decoding
from reprise.errors import InvalidArgument

GREEDY = Decoding(temperature=0.0, max_new_tokens=8)


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


@pytest.fixture
async def world() -> AsyncIterator[tuple[Gateway, FakeCache, FakeInference]]:
    cache, inference = FakeCache(), FakeInference()
    gw = Gateway(cache, inference, GatewayConfig(cache_timeout_s=0.05))
    await gw.start()
    await asyncio.sleep(0)  # let the invalidation watch subscribe
    yield gw, cache, inference
    await gw.close()


def test_a_request_is_identified_by_its_pictures_digests_not_by_holding_them() -> None:
    m = ModelIdentity("m", "r")
    with_bytes = CacheRequest("ns", "chat", m, Prompt("what is this?", images=(RED,)))
    light = with_bytes.without_image_bytes()
    assert light == with_bytes and hash(light) == hash(with_bytes) and light.prompt.images == ()
    assert CacheRequest("ns", "chat", m, Prompt("what is this?", images=(BLUE,))) != with_bytes
    assert CacheRequest("ns", "chat", m, Prompt("what is this?", images=(BLUE, RED))) != CacheRequest(
        "ns", "chat", m, Prompt("what is this?", images=(RED, BLUE))
    )  # order matters: "the first picture" is another question
    assert CacheRequest("ns", "chat", m, Prompt("what is this?")) != with_bytes


def test_the_hot_layer_keeps_no_picture_bytes() -> None:
    hot = HotLayer(HotConfig(max_entries=10))
    hot.activate()
    request = CacheRequest("ns", "chat", ModelIdentity("m", "r"), Prompt("what is this?", images=(RED,)))
    assert hot.put(request, CachedEntry(Answer(reply="red"), "k1", 0.0, 0.0), hot.epoch)
    same = CacheRequest("ns", "chat", ModelIdentity("m", "r"), Prompt("what is this?", images=(bytes(RED),)))
    assert hot.get(same) is not None
    assert all(not kept.prompt.images for kept in hot._slots)  # noqa: SLF001 (what the layer holds is the point)


async def test_pictures_reach_the_cache_key_and_inference(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    first = await gw.chat("ns", Prompt("what is this?", decoding=GREEDY, images=(RED,)), Policy())
    assert first.cache.status is CacheStatus.MISS and inference.images == [(RED,)]
    for _ in range(5):
        await asyncio.sleep(0)  # the write-back
    again = await gw.chat("ns", Prompt("what is this?", decoding=GREEDY, images=(RED,)), Policy())
    assert again.cache.status is CacheStatus.EXACT and again.reply == first.reply
    other = await gw.chat("ns", Prompt("what is this?", decoding=GREEDY, images=(BLUE,)), Policy())
    assert other.cache.status is CacheStatus.MISS and other.cache.key != first.cache.key
    deltas = [d async for d in gw.chat_stream("ns", Prompt("and this?", decoding=GREEDY, images=(BLUE, RED)), Policy())]
    assert deltas[-1].finish is not None and inference.images[-1] == (BLUE, RED)


@pytest.mark.parametrize(
    "images, message",
    [
        ((b"definitely not a picture",), "images[0]: not a decodable image"),
        ((RED,) * 9, "images: has 9 images; the limit is 8"),
        ((png((0, 0, 0), (4097, 4096)),), "images[0]: declares 4097x4096 pixels"),
    ],
    ids=["garbage", "too-many", "too-many-pixels"],
)
async def test_bad_pictures_are_refused_before_the_cache_is_asked(world, images, message) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    with pytest.raises(InvalidArgument) as err:
        await gw.chat("ns", Prompt("what is this?", decoding=GREEDY, images=images), Policy())
    assert err.value.message.startswith(message)
    with pytest.raises(InvalidArgument):
        async for _ in gw.chat_stream("ns", Prompt("what is this?", decoding=GREEDY, images=images), Policy()):
            pass
    assert cache.lookups == 0 and inference.chat_calls == 0


async def test_a_model_that_takes_no_images_is_refused_before_the_cache_is_asked(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    gw._model = ModelIdentity(gw.model.model_id, gw.model.revision, takes_images=False)  # noqa: SLF001 (as ModelInfo said)
    with pytest.raises(InvalidArgument) as err:
        await gw.chat("ns", Prompt("what is this?", decoding=GREEDY, images=(RED,)), Policy())
    assert err.value.message == "images: model tiny takes no images"
    assert cache.lookups == 0 and inference.chat_calls == 0
    assert (await gw.chat("ns", Prompt("what is this?", decoding=GREEDY), Policy())).reply  # text is still served


async def test_a_model_that_did_not_say_gets_the_pictures(world) -> None:  # type: ignore[no-untyped-def]
    gw, cache, inference = world
    assert gw.model.takes_images is None  # an inference server older than the field
    await gw.chat("ns", Prompt("what is this?", decoding=GREEDY, images=(RED,)), Policy())
    assert inference.images == [(RED,)]
