"""The cache-first flow through real servers: gateway -> cache (real Redis) -> inference (tiny model)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gateway_support import eventually, metric, unique

from inference_svc.core import prompts
from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from reprise.common.v1 import common_pb2
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc

EXACT, MISS, SEMANTIC, BYPASS = (
    pb.CACHE_STATUS_EXACT,
    pb.CACHE_STATUS_MISS,
    pb.CACHE_STATUS_SEMANTIC,
    pb.CACHE_STATUS_BYPASS,
)


@pytest.fixture
def stub(gateway_host, channel_to) -> pb_grpc.GatewayStub:  # type: ignore[no-untyped-def]
    return pb_grpc.GatewayStub(channel_to(gateway_host))


def inference_calls(method: str) -> float:
    return metric("reprise_rpc_requests_total", service="inference", method=method, code="OK")


async def test_classify_hit_after_miss_reports_where_it_came_from(stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.ClassifyRequest(text=unique("The battery lasts all day"))
    miss = await stub.Classify(request)
    assert miss.cache.status == MISS and miss.cache.store and len(miss.cache.key) == 64
    assert miss.timings.inference_ms > 0 and miss.timings.stages_ms["lookup"] > 0
    assert any(k.startswith("cache.") for k in miss.timings.stages_ms)  # the cache's own stages
    hit = await eventually(lambda: stub.Classify(request), lambda r: r.cache.status == EXACT)
    assert hit.result == miss.result and hit.cache.key == miss.cache.key
    assert hit.timings.inference_ms == 0 and hit.usage == miss.usage  # usage of the computation it replays


async def test_hot_layer_serves_repeats_and_follows_invalidation(gateway_host, cache_host, stub, channel_to) -> None:  # type: ignore[no-untyped-def]
    await eventually(lambda: stub.Stats(pb.StatsRequest()), lambda s: s.hot_active)
    request = pb.ChatRequest(text=unique("Tell me about caches"))
    first = await stub.Chat(request)
    hot = await eventually(lambda: stub.Chat(request), lambda r: r.cache.hot)
    assert hot.cache.status == EXACT and hot.reply == first.reply
    assert "lookup" not in hot.timings.stages_ms and "hot" in hot.timings.stages_ms
    # Invalidate through the cache: the gateway must not serve its memory copy afterwards.
    cache = cache_pb2_grpc.CacheStub(channel_to(cache_host))
    removed = await cache.Invalidate(cache_pb2.InvalidateRequest(key=hot.cache.key))
    assert removed.removed == 1
    after = await eventually(lambda: stub.Chat(request), lambda r: not r.cache.hot, timeout_s=5)
    assert after.cache.status == MISS


async def test_semantic_hit_through_the_gateway(stub) -> None:  # type: ignore[no-untyped-def]
    suffix = unique("")
    await stub.Chat(pb.ChatRequest(text=f"What is the capital city of France {suffix}"))
    paraphrase = pb.ChatRequest(
        text=f"Which city is the capital of France {suffix}", cache=pb.CachePolicy(min_similarity=0.5, no_store=True)
    )
    hit = await eventually(lambda: stub.Chat(paraphrase), lambda r: r.cache.status == SEMANTIC)
    assert 0.5 <= hit.cache.similarity < 1.0
    assert hit.cache.matched_text.startswith("What is the capital city of France")
    # Sentiment is exact-only by default: a paraphrase that can hit semantically when the
    # request allows it (the control) is a miss under the default policy.
    # (Stored with exact_only=false so the entry is embedded: by default sentiment entries are not.)
    await stub.Classify(pb.ClassifyRequest(text=f"I really love this phone {suffix}", cache=pb.CachePolicy(exact_only=False)))
    paraphrase_text = f"I truly love this phone {suffix}"
    allowed = pb.CachePolicy(exact_only=False, min_similarity=0.5, no_store=True)
    control = await eventually(
        lambda: stub.Classify(pb.ClassifyRequest(text=paraphrase_text, cache=allowed)),
        lambda r: r.cache.status == SEMANTIC,
    )
    assert control.cache.matched_text.startswith("I really love")
    default = pb.CachePolicy(min_similarity=0.5, no_store=True)
    r = await stub.Classify(pb.ClassifyRequest(text=paraphrase_text, cache=default))
    assert r.cache.status == MISS


async def test_policies_through_real_servers(stub) -> None:  # type: ignore[no-untyped-def]
    text = unique("policy check")
    r = await stub.Chat(pb.ChatRequest(text=text, cache=pb.CachePolicy(no_store=True)))
    assert r.cache.status == MISS and not r.cache.store
    await asyncio.sleep(0.2)
    r = await stub.Chat(pb.ChatRequest(text=text))
    assert r.cache.status == MISS  # nothing was stored the first time
    r = await stub.Chat(pb.ChatRequest(text=text, cache=pb.CachePolicy(no_cache=True)))
    assert r.cache.status == BYPASS and r.cache.reason == "no_cache policy"
    await eventually(lambda: stub.Chat(pb.ChatRequest(text=text)), lambda r: r.cache.status == EXACT)
    # max_age: an answer stored earlier is too old for a caller asking for at most 0 s.
    await asyncio.sleep(1.1)
    r = await stub.Chat(pb.ChatRequest(text=text, cache=pb.CachePolicy(max_age_seconds=0, no_store=True)))
    assert r.cache.status == MISS
    # Sampled without a seed: fresh every time, never stored; with cache_sampled it is stored.
    sampled = common_pb2.DecodingParams(temperature=0.9)
    s_text = unique("sample me")
    r = await stub.Chat(pb.ChatRequest(text=s_text, decoding=sampled))
    assert r.cache.status == BYPASS and r.cache.reason == "sampled decoding" and not r.cache.store
    r = await stub.Chat(pb.ChatRequest(text=s_text, decoding=sampled, cache=pb.CachePolicy(cache_sampled=True)))
    assert r.cache.status == MISS and r.cache.store
    opt_in = pb.ChatRequest(text=s_text, decoding=sampled, cache=pb.CachePolicy(cache_sampled=True))
    await eventually(lambda: stub.Chat(opt_in), lambda r: r.cache.status == EXACT)
    # ttl: an entry stored for 1 s is gone after it.
    t_text = unique("short lived")
    await stub.Classify(pb.ClassifyRequest(text=t_text, cache=pb.CachePolicy(ttl_seconds=1)))
    await eventually(lambda: stub.Classify(pb.ClassifyRequest(text=t_text, cache=pb.CachePolicy(no_store=True))),
                     lambda r: r.cache.status == EXACT)
    await asyncio.sleep(1.2)
    r = await stub.Classify(pb.ClassifyRequest(text=t_text, cache=pb.CachePolicy(no_store=True)))
    assert r.cache.status == MISS


async def test_stream_replay_matches_live_stream(stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.ChatStreamRequest(text=unique("Describe the sea"))
    live = [m async for m in stub.ChatStream(request)]
    assert live[0].cache.status == MISS and live[-1].HasField("finish_reason")

    async def replay() -> list[pb.ChatStreamResponse]:
        return [m async for m in stub.ChatStream(request)]

    cached = await eventually(replay, lambda ms: ms[0].cache.status == EXACT)
    assert "".join(m.delta for m in cached) == "".join(m.delta for m in live)
    assert [m.HasField("cache") for m in cached] == [True] + [False] * (len(cached) - 1)
    assert [m.HasField("finish_reason") for m in cached] == [False] * (len(cached) - 1) + [True]
    assert cached[-1].finish_reason == live[-1].finish_reason and cached[-1].usage == live[-1].usage
    assert cached[-1].timings.inference_ms == 0


async def test_singleflight_50_identical_requests_one_model_call(stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.ChatRequest(text=unique("Explain singleflight"), decoding=common_pb2.DecodingParams(max_new_tokens=64))
    before = inference_calls("ChatStream")
    replies = await asyncio.gather(*(stub.Chat(request) for _ in range(50)))
    assert inference_calls("ChatStream") - before == 1
    assert len({r.reply for r in replies}) == 1
    statuses = [r.cache.status for r in replies]
    assert statuses.count(MISS) >= 1 and set(statuses) <= {MISS, EXACT}
    assert sum(r.cache.coalesced for r in replies) + statuses.count(EXACT) == 49

    c_request = pb.ClassifyRequest(text=unique("Singleflight for labels"))
    before = inference_calls("Classify")
    labels = await asyncio.gather(*(stub.Classify(c_request) for _ in range(50)))
    assert inference_calls("Classify") - before == 1
    assert len({(r.result.label, r.result.probability) for r in labels}) == 1


async def test_analyze_parts_and_unknown_task(stub) -> None:  # type: ignore[no-untyped-def]
    text = unique("这家餐厅的菜太难吃了")
    both = await stub.Analyze(pb.AnalyzeRequest(text=text))
    assert both.sentiment.label in (1, 2) and both.reply
    assert both.sentiment_cache.status == MISS and both.reply_cache.status == MISS
    assert both.usage.prompt_tokens == both.sentiment_usage.prompt_tokens + both.reply_usage.prompt_tokens
    assert "sentiment.inference" in both.timings.stages_ms and "chat.inference" in both.timings.stages_ms
    only = await stub.Analyze(pb.AnalyzeRequest(text=text, tasks=["sentiment"]))
    assert only.HasField("sentiment") and not only.HasField("reply_cache") and only.reply == ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Analyze(pb.AnalyzeRequest(text=text, tasks=["sentiment", "summarize"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tasks[1]" in err.value.details() and "summarize" in err.value.details()


async def test_stats_and_metrics(stub) -> None:  # type: ignore[no-untyped-def]
    before = metric("reprise_gateway_requests_total", task="sentiment", status="miss", hot="false")
    await stub.Classify(pb.ClassifyRequest(text=unique("count me")))
    assert metric("reprise_gateway_requests_total", task="sentiment", status="miss", hot="false") == before + 1
    s = await stub.Stats(pb.StatsRequest())
    assert s.tenant == "public" and s.breaker_state == "closed"
    assert s.counters.requests >= s.counters.misses >= 1 and s.counters.model_calls >= 1
    assert s.HasField("cache_entries") and s.cache_entries >= 1
    assert s.model_id and s.model_revision
    # The key's revision is the weights' and the prompts': a prompt upgrade is a new model to the cache.
    weights, _, prompts_rev = s.model_revision.partition("+")
    assert weights and prompts_rev == prompts.revision(prompts.SENTIMENT, prompts.CHAT_SYSTEM_PROMPT)
    assert metric("reprise_gateway_breaker_state") == 0
    assert metric("reprise_gateway_hit_ratio", tier="exact") >= 0
