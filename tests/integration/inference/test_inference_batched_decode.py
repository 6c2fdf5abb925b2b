"""Continuous batching on the tiny model: N concurrent greedy replies, decoded in shared passes, equal each run alone.

Every active stream advances one token per pass through one forward with a row per stream
(:meth:`~inference_svc.runtime.model.Transformer.decode_batch`); rows have their own KV caches of their
own lengths. The replies here have prompts of different lengths and stop at different points, so
streams join and leave between passes. Formats cover each decode path: the whole-step C call (int4
under bf16 and fp32), the per-operation path with fused C operations (dense/int8 weights, Qwen3's head
norms), torch's operations, and the C attention's portable path (head size 16).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from inference_svc.core.worker import ModelWorker
from reprise.domain import Decoding

from tests.support.tiny_model import build_tiny_causal_lm, build_tiny_model

PROMPTS = [
    "hello there",
    "tell me a joke about cats",
    "中文句子",
    "what is the capital of France? " * 6,
    "x",
    "I love this phone, the battery lasts all day.",
]


def _engine(model_dir: Path, cache: Path, **kwargs: object) -> Engine:
    engine = Engine(EngineConfig(model=str(model_dir), cache_dir=cache, max_new_tokens=24, **kwargs))  # type: ignore[arg-type]
    engine.load()
    engine.warm_up()
    return engine


def _alone(engine: Engine, text: str, decoding: Decoding) -> str:
    return "".join(c.delta for c in engine.chat(ChatRequest(text, decoding=decoding), threading.Event(), remember=False))


async def _together(engine: Engine, texts: list[str], decoding: Decoding) -> tuple[list[str], list[list[int]]]:
    """The replies of ``texts`` run concurrently on one worker, and the rows of every pass it ran."""
    worker = ModelWorker(max_queue=32, max_active_streams=len(texts))
    passes: list[list[int]] = []
    run = engine._decode_rows

    def recording(rows):  # type: ignore[no-untyped-def]
        passes.append([r.kv.length for r in rows])
        run(rows)

    engine._decode_rows = recording  # type: ignore[method-assign]
    release = threading.Event()
    worker.start()
    try:
        worker.submit(lambda _c: release.wait(10))  # every stream starts in the same round

        async def reply(text: str) -> str:
            stream = worker.stream(lambda c: engine.chat_steps(ChatRequest(text, decoding=decoding), c, remember=False))
            return "".join([chunk.delta async for chunk in stream])

        replies = [asyncio.ensure_future(reply(t)) for t in texts]
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(*replies)), passes
    finally:
        del engine._decode_rows
        worker.close(timeout=30)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-64"), head_dim=64)  # the real model's head size


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the module: each format is converted once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    "config",
    [
        {},  # the default: int4 weights, bf16, the whole step in one C call where the CPU has AVX512-BF16
        {"dtype": "fp32", "weights": "int4"},
        {"dtype": "fp32", "weights": "int4", "activations": "int8"},
        {"weights": "int8"},
        {"dtype": "fp32", "weights": "dense"},
        {"decode_ops": "torch"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
async def test_concurrent_greedy_replies_equal_each_alone(wide_model: Path, cache: Path, config: dict) -> None:
    try:
        engine = _engine(wide_model, cache, **config)
    except ValueError as exc:
        # A format this CPU cannot serve (int8 activations without int4 under fp32; int8 weights without
        # AVX512-BF16/AMX, e.g. AMD Zen 2/3): the refusal names the option it refuses.
        assert any(option in str(exc) for option in config), str(exc)
        return
    decoding = Decoding(max_new_tokens=20)
    alone = [_alone(engine, t, decoding) for t in PROMPTS]
    together, passes = await _together(engine, PROMPTS, decoding)
    assert together == alone
    assert max(map(len, passes)) == len(PROMPTS)  # they did share passes
    assert any(len(set(p)) > 1 for p in passes)  # of rows at different positions


async def test_head_size_16_and_sampling_per_stream(tiny_model_dir: Path, cache: Path) -> None:
    """The C attention's portable path (head size 16); seeded sampling streams draw what they draw alone."""
    engine = _engine(tiny_model_dir, cache)
    greedy = Decoding(max_new_tokens=16)
    sampled = Decoding(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=7)
    texts, decodings = PROMPTS[:4], [greedy, sampled, greedy, sampled]
    alone = [_alone(engine, t, d) for t, d in zip(texts, decodings)]
    assert await _mixed(engine, texts, decodings) == alone


async def _mixed(engine: Engine, texts: list[str], decodings: list[Decoding]) -> list[str]:
    worker = ModelWorker(max_queue=32, max_active_streams=len(texts))
    release = threading.Event()
    worker.start()
    try:
        worker.submit(lambda _c: release.wait(10))

        async def reply(text: str, decoding: Decoding) -> str:
            stream = worker.stream(lambda c: engine.chat_steps(ChatRequest(text, decoding=decoding), c, remember=False))
            return "".join([chunk.delta async for chunk in stream])

        replies = [asyncio.ensure_future(reply(t, d)) for t, d in zip(texts, decodings)]
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(*replies))
    finally:
        worker.close(timeout=30)


async def test_qwen3_head_norms_take_the_per_operation_batch(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = build_tiny_causal_lm(tmp_path_factory.mktemp("qwen3"), "qwen3", head_dim=64, tie_word_embeddings=True)
    engine = _engine(model, tmp_path_factory.mktemp("qwen3-cache"))
    assert engine.model.step_plan is None  # per-head norms: the per-operation path
    decoding = Decoding(max_new_tokens=16)
    alone = [_alone(engine, t, decoding) for t in PROMPTS]
    together, passes = await _together(engine, PROMPTS, decoding)
    assert together == alone and max(map(len, passes)) == len(PROMPTS)


async def test_a_cancelled_stream_leaves_and_the_others_finish_unchanged(wide_model: Path, cache: Path) -> None:
    engine = _engine(wide_model, cache)
    decoding = Decoding(max_new_tokens=20)
    alone = [_alone(engine, t, decoding) for t in PROMPTS[:3]]
    worker = ModelWorker(max_queue=32, max_active_streams=4)
    worker.start()
    try:
        async def reply(text: str, stop_after: int | None = None) -> str:
            out = []
            stream = worker.stream(lambda c: engine.chat_steps(ChatRequest(text, decoding=decoding), c))
            async for chunk in stream:
                out.append(chunk.delta)
                if stop_after is not None and len(out) >= stop_after:
                    await stream.aclose()  # the client goes away mid-reply
                    break
            return "".join(out)

        results = await asyncio.gather(reply(PROMPTS[0]), reply("a reply cut short " * 3, stop_after=2), reply(PROMPTS[1]), reply(PROMPTS[2]))
    finally:
        worker.close(timeout=30)
    assert [results[0], results[2], results[3]] == alone
    # the cut reply's KV (its tokens so far) was stored consistently: a follow-up reuses it
    assert engine.index.stats().entries >= 2
