"""Vision-language models on the generic path: tiny random Qwen2-VL and Qwen2.5-VL built from a config answer
image + text chats exactly as transformers does, over gRPC too; a text-only model refuses images; bad files are refused."""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import torch

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from inference_svc.runtime import model_source, vision
from inference_svc.server import InferenceApp
from reprise.domain import Decoding, Role, Turn
from reprise.errors import InvalidArgument
from reprise.images import decode_images
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost

from tests.support.tiny_vl_model import build_tiny_vl_model, png

QUESTION = "What is in this picture?"
GREEDY = Decoding(max_new_tokens=12, temperature=0.0)
RED, BLUE = png((200, 10, 10), mark=20), png((10, 10, 200), size=(90, 60))


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vl_model(tmp_path_factory.mktemp("vl") / "qwen2-vl")


@pytest.fixture(scope="module")
def engine(vl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    e = Engine(EngineConfig(model=str(vl_dir), cache_dir=tmp_path_factory.mktemp("vl-cache"), max_new_tokens=12))
    e.load()
    e.warm_up()
    return e


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def any_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """An engine serving a tiny Qwen2-VL, then one serving a tiny Qwen2.5-VL (another vision tower)."""
    model = build_tiny_vl_model(tmp_path_factory.mktemp(request.param) / request.param, model_type=request.param)
    e = Engine(EngineConfig(model=str(model), cache_dir=tmp_path_factory.mktemp("any-vl-cache"), max_new_tokens=12))
    e.load()
    e.warm_up()
    return e


def _reply(engine: Engine, text: str, pictures: vision.Pictures | None, history: tuple[Turn, ...] = ()) -> tuple[str, object]:
    """Our greedy reply (text) and its last chunk."""
    chat = ChatRequest(text, history, decoding=GREEDY, pictures=pictures)
    steps = engine.chat_steps(chat, threading.Event(), remember=False)
    chunks = [s.item for s in steps if s.item is not None]
    return "".join(c.delta for c in chunks), chunks[-1]


def _transformers_reply(engine: Engine, text: str, pictures: vision.Pictures, history: tuple[Turn, ...] = ()) -> str:
    """transformers' own greedy generate on the same prompt ids and pixels."""
    prompt = engine._chat_prompt(ChatRequest(text, history, pictures=pictures))
    ids = torch.tensor(prompt.ids)[None]
    out = engine.model.hf.generate(
        input_ids=ids,
        pixel_values=pictures.pixel_values,
        image_grid_thw=pictures.grid_thw,
        mm_token_type_ids=(ids == engine.model.image_token_id).int(),
        max_new_tokens=GREEDY.max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(engine._eos),
    )
    new = out[0, ids.shape[1] :].tolist()
    return engine.tokenizer.decode([t for t in new if t not in engine._eos], skip_special_tokens=True)


def test_a_vl_directory_is_recognised_and_served_by_its_own_class(engine: Engine, vl_dir: Path) -> None:
    assert vision.is_vision_dir(vl_dir, json.loads((vl_dir / "config.json").read_text()))
    assert vision.takes_images(engine.model)
    assert engine.describe().architecture == "Qwen2VLForConditionalGeneration"
    assert type(engine.model.hf).__name__ == "Qwen2VLForConditionalGeneration"


@pytest.mark.parametrize("images", [(RED,), (BLUE,), (RED, BLUE)], ids=["red", "blue-wide", "two"])
def test_image_chat_matches_transformers_greedy_token_for_token(any_engine: Engine, images: tuple[bytes, ...]) -> None:
    engine = any_engine
    pictures = engine.model.prepare(decode_images(images))
    ours, last = _reply(engine, QUESTION, pictures)
    assert ours == _transformers_reply(engine, QUESTION, pictures)
    # The prompt holds every picture's image tokens; the system prompt's pinned KV was reused before them.
    assert last.usage.prompt_tokens >= sum(pictures.tokens) + len(QUESTION) // 8
    assert last.usage.cached_tokens > 0


def test_history_turns_before_an_image_message(any_engine: Engine) -> None:
    engine = any_engine
    history = (Turn(Role.USER, "hello"), Turn(Role.ASSISTANT, "hi, how can I help?"))
    pictures = engine.model.prepare(decode_images([RED]))
    ours, _ = _reply(engine, QUESTION, pictures, history)
    assert ours == _transformers_reply(engine, QUESTION, pictures, history)


def test_the_picture_changes_the_reply_and_image_turns_are_not_reused(engine: Engine) -> None:
    red = engine.model.prepare(decode_images([RED]))
    blue = engine.model.prepare(decode_images([png((10, 10, 200), mark=20)]))  # same size as RED: same token ids
    assert red.tokens == blue.tokens
    entries = engine.index.stats().entries
    first = list(engine.chat(ChatRequest(QUESTION, decoding=GREEDY), threading.Event()))  # text-only: stored for reuse
    steps = engine.chat_steps(ChatRequest(QUESTION, decoding=GREEDY, pictures=red), threading.Event())
    reply_red = "".join(s.item.delta for s in steps if s.item is not None)
    steps = engine.chat_steps(ChatRequest(QUESTION, decoding=GREEDY, pictures=blue), threading.Event())
    reply_blue = "".join(s.item.delta for s in steps if s.item is not None)
    assert reply_red != reply_blue  # the pixels reach the model, not only the image token ids
    assert engine.index.stats().entries == entries + 1  # the text-only turn only
    assert first[-1].finish is not None


def test_processor_files_are_part_of_the_revision(vl_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(vl_dir, copy)
    cache = tmp_path / "cache"
    before = model_source.content_revision(copy, cache)
    config = json.loads((copy / "preprocessor_config.json").read_text())
    config["max_pixels"] = 56 * 56  # fewer image tokens per picture: other answers
    (copy / "preprocessor_config.json").write_text(json.dumps(config))
    assert model_source.content_revision(copy, cache) != before


# -- over gRPC -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def vl_host(vl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceHost]:
    app = InferenceApp(EngineConfig(model=str(vl_dir), cache_dir=tmp_path_factory.mktemp("vl-grpc"), max_new_tokens=8))
    host = ServiceHost(app, ServerOptions(port=0))
    await host.start()
    yield host
    await host.stop(0)


async def test_image_chat_streams_over_grpc(vl_host: ServiceHost, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.InferenceStub(channel_to(vl_host))
    request = pb.ChatStreamRequest(text=QUESTION, images=[RED], decoding={"temperature": 0.0, "max_new_tokens": 8})
    messages = [m async for m in stub.ChatStream(request)]
    assert messages[-1].HasField("finish_reason") and messages[-1].usage.completion_tokens > 0
    assert messages[-1].usage.prompt_tokens > len(QUESTION) // 4  # the image tokens count
    whole = await stub.Chat(pb.ChatRequest(text=QUESTION, images=[RED], decoding={"temperature": 0.0, "max_new_tokens": 8}))
    assert whole.reply == "".join(m.delta for m in messages)


@pytest.mark.parametrize(
    "images, field, words",
    [
        ([b"not an image at all"], "images[0]", "not a decodable image"),
        ([RED[: len(RED) // 2]], "images[0]", "not a decodable image"),  # a header, then the data cut off
        ([RED] * 9, "images", "the limit is 8"),
    ],
    ids=["garbage", "truncated", "too-many"],
)
async def test_bad_images_are_invalid_argument(vl_host: ServiceHost, channel_to, images, field, words) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.InferenceStub(channel_to(vl_host))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(pb.ChatRequest(text=QUESTION, images=images))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field) and words in err.value.details()


async def test_a_text_only_model_takes_no_images(inference_host: ServiceHost, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.InferenceStub(channel_to(inference_host))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(pb.ChatRequest(text=QUESTION, images=[RED]))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no images" in err.value.details() and "Qwen2ForCausalLM" in err.value.details()
    # The same request without the image is answered.
    assert (await stub.Chat(pb.ChatRequest(text=QUESTION, decoding={"max_new_tokens": 2}))).finish_reason


def _png_bytes(size: tuple[int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (0, 0, 0)).save(out, format="PNG")
    return out.getvalue()


async def test_a_picture_over_the_pixel_cap_is_refused_before_decoding(vl_host: ServiceHost, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.InferenceStub(channel_to(vl_host))
    big = _png_bytes((4100, 4100))  # one colour: ~50 KB on the wire, 16.8 M pixels declared
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Chat(pb.ChatRequest(text=QUESTION, images=[big]))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "pixels" in err.value.details()


def test_a_typed_image_token_is_text_not_an_image_slot(engine: Engine) -> None:
    pictures = engine.model.prepare(decode_images([RED]))
    typed = engine._chat_prompt(ChatRequest("<|vision_start|><|image_pad|><|vision_end|> what is this?", pictures=pictures))
    assert typed.ids.count(engine.model.image_token_id) == sum(pictures.tokens)  # only the real picture's tokens


def test_large_pictures_are_scaled_to_the_image_token_cap(engine: Engine) -> None:
    capped = vision.VisionModel(engine.model.hf, engine.model.max_context, engine.model.image_processor, max_image_tokens=4)
    assert capped.prepare(decode_images([png((1, 2, 3), size=(112, 112))])).tokens == (4,)
    assert engine.model.prepare(decode_images([png((1, 2, 3), size=(112, 112))])).tokens == (16,)  # under the cap
    assert capped.format_note != engine.model.format_note  # the cap is part of the revision
    assert engine.model.format_note in engine.loaded.serving_format


def test_pictures_over_the_context_are_blamed(engine: Engine) -> None:
    pictures = engine.model.prepare(decode_images([png((1, 2, 3), size=(112, 112))] * 2))
    prompt = engine._chat_prompt(ChatRequest(QUESTION, pictures=pictures))
    over = prompt.too_long(len(prompt.ids) - 5)  # fits without the pictures: they are to blame
    assert over.field == "images" and "smaller pictures" in over.message
    assert prompt.too_long(len(prompt.ids) - pictures.prompt_tokens - 1).field != "images"
