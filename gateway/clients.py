"""gRPC adapters implementing the gateway's ports against the cache and inference services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from gateway.core.ports import CacheError
from gateway.core.types import (
    CachedEntry,
    CacheHit,
    CacheInfo,
    CacheRequest,
    CacheStatus,
    InferenceChunk,
    Invalidation,
    InvalidationKind,
    LookupResult,
    ModelIdentity,
    Prompt,
    StoredEntry,
)
from reprise import convert, tracing
from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from reprise.domain import Answer, SentimentResult, Usage
from reprise.errors import ServiceError, Unavailable, from_status
from reprise.inference.v1 import inference_pb2, inference_pb2_grpc
from reprise.rpc.logs import REQUEST_ID_HEADER, request_id
from reprise.rpc.tenant import TENANT_HEADER
from reprise.rpc.tenant import tenant as calling_tenant


def _metadata() -> tuple[tuple[str, str], ...]:
    who = calling_tenant.get()  # set by the servicer: the inference service queues tenants fairly
    mine = ((TENANT_HEADER, who),) if who is not None else ()
    return ((REQUEST_ID_HEADER, request_id.get()), *mine, *tracing.propagation())


def _downstream(service: str, err: grpc.aio.AioRpcError) -> ServiceError:
    """Keep the status a dependency returned; say which dependency it was.

    CANCELLED is the exception. Our own caller going away reaches us as
    ``asyncio.CancelledError``, never as a status, so a CANCELLED status means the
    dependency dropped the call: grpc-core cancels a call that arrives just as a
    server begins its graceful shutdown. That is the server going away, which
    callers know as UNAVAILABLE and retry (the SDK's service config does).
    """
    if err.code() is grpc.StatusCode.CANCELLED:
        return Unavailable(f"{service}: the call was dropped (the service is draining or restarting); retry")
    return from_status(err.code().name, f"{service}: {err.details()}")


def model_identity_from_pb(info: inference_pb2.ModelInfoResponse) -> ModelIdentity:
    """The model as the cache keys it: the prompts shape answers as much as the weights do."""
    revision = f"{info.revision}+{info.prompts_revision}" if info.prompts_revision else info.revision
    takes_images = info.takes_images if info.HasField("takes_images") else None
    return ModelIdentity(info.model_id, revision, takes_images)


def _cache_error(err: grpc.aio.AioRpcError) -> CacheError:
    return CacheError(err.code().name, err.details() or "")


def cache_query_to_pb(req: CacheRequest) -> cache_pb2.CacheQuery:
    prompt = req.prompt
    return cache_pb2.CacheQuery(
        namespace=req.namespace,
        model_id=req.model.model_id,
        model_revision=req.model.revision,
        task=req.task,
        text=prompt.text,
        system_prompt=prompt.system_key,
        history=convert.turns_to_pb(prompt.history),
        decoding=convert.decoding_to_pb(prompt.decoding),
        images=list(prompt.images),
    )


def chat_stream_request_to_pb(prompt: Prompt) -> inference_pb2.ChatStreamRequest:
    msg = inference_pb2.ChatStreamRequest(
        text=prompt.text,
        history=convert.turns_to_pb(prompt.history),
        decoding=convert.decoding_to_pb(prompt.decoding),
        images=list(prompt.images),
    )
    if prompt.system_prompt is not None:
        msg.system_prompt = prompt.system_prompt
    return msg


def _seconds(ts: object) -> float:
    return ts.seconds + ts.nanos / 1e9  # type: ignore[attr-defined]


def lookup_result_from_pb(response: cache_pb2.LookupResponse) -> LookupResult:
    stages = dict(response.stage_ms)
    if response.tier not in (cache_pb2.TIER_EXACT, cache_pb2.TIER_SEMANTIC):
        return LookupResult(None, response.key, response.rejected_reason, stages)
    exact = response.tier == cache_pb2.TIER_EXACT
    e = response.entry
    entry = CachedEntry(
        convert.answer_from_pb(e.answer, "entry.answer"),
        e.key or response.key,
        _seconds(e.created_at),
        _seconds(e.expires_at),
    )
    info = CacheInfo(
        CacheStatus.EXACT if exact else CacheStatus.SEMANTIC,
        similarity=response.similarity if not exact else 1.0,
        matched_text="" if exact else e.text,
        key=entry.key,
    )
    return LookupResult(CacheHit(entry, info), response.key, response.rejected_reason, stages)


def invalidation_from_pb(r: cache_pb2.WatchInvalidationsResponse) -> Invalidation | None:
    target = r.WhichOneof("target")
    if target == "key":
        return Invalidation(InvalidationKind.KEY, r.key)
    if target == "namespace":
        return Invalidation(InvalidationKind.NAMESPACE, r.namespace)
    if target == "model":
        revision = r.model.model_revision if r.model.HasField("model_revision") else None
        return Invalidation(InvalidationKind.MODEL, r.model.model_id, revision)
    return None  # a kind this gateway does not know yet: nothing it holds can match


class GrpcCache:
    """The cache service behind :class:`~gateway.core.ports.CachePort`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = cache_pb2_grpc.CacheStub(channel)

    async def lookup(
        self,
        request: CacheRequest,
        *,
        exact_only: bool,
        min_similarity: float | None,
        max_age_s: int | None,
        timeout_s: float,
    ) -> LookupResult:
        msg = cache_pb2.LookupRequest(query=cache_query_to_pb(request), exact_only=exact_only)
        if min_similarity is not None:
            msg.min_similarity = min_similarity
        if max_age_s is not None:
            msg.max_age_seconds = max_age_s
        try:
            response = await self._stub.Lookup(msg, timeout=timeout_s, metadata=_metadata())
        except grpc.aio.AioRpcError as err:
            raise _cache_error(err) from None
        try:
            return lookup_result_from_pb(response)
        except ServiceError as exc:  # an entry we cannot read is the cache's fault, not the caller's
            raise CacheError("DATA_LOSS", exc.message) from None

    async def store(
        self, request: CacheRequest, answer: Answer, *, ttl_s: int | None, exact_only: bool, timeout_s: float
    ) -> StoredEntry:
        msg = cache_pb2.StoreRequest(
            query=cache_query_to_pb(request), answer=convert.answer_to_pb(answer), exact_only=exact_only
        )
        if ttl_s is not None:
            msg.ttl_seconds = ttl_s
        try:
            r = await self._stub.Store(msg, timeout=timeout_s, metadata=_metadata())
        except grpc.aio.AioRpcError as err:
            raise _cache_error(err) from None
        return StoredEntry(r.key, _seconds(r.expires_at))

    async def entries(self, namespace: str, timeout_s: float) -> int:
        try:
            r = await self._stub.Stats(cache_pb2.StatsRequest(namespace=namespace), timeout=timeout_s, metadata=_metadata())
        except grpc.aio.AioRpcError as err:
            raise _cache_error(err) from None
        return r.entries

    async def watch_invalidations(self, on_open: Callable[[], None]) -> AsyncIterator[Invalidation]:
        call = self._stub.WatchInvalidations(cache_pb2.WatchInvalidationsRequest(), metadata=_metadata())
        opener = asyncio.ensure_future(self._open_when_subscribed(call, on_open))
        try:
            async for r in call:
                event = invalidation_from_pb(r)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as err:
            raise _cache_error(err) from None
        finally:
            opener.cancel()
            call.cancel()

    @staticmethod
    async def _open_when_subscribed(call: grpc.aio.UnaryStreamCall, on_open: Callable[[], None]) -> None:
        """Call ``on_open`` once the cache acknowledged the subscription.

        The cache sends initial metadata right after registering the watcher, so
        every invalidation after that moment reaches us; before it, events could be
        missed, so the hot layer must not serve yet. A call that ends instead
        (UNIMPLEMENTED, cache down) never opens.
        """
        await call.initial_metadata()
        if not call.done():
            on_open()


class GrpcInference:
    def __init__(self, channel: grpc.aio.Channel, connect_grace_s: float = 3.0) -> None:
        self._channel = channel
        self._stub = inference_pb2_grpc.InferenceStub(channel)
        self._connect_grace_s = connect_grace_s

    async def _connected(self, timeout_s: float | None) -> None:
        """Wait (briefly, within the deadline) for a reconnecting channel instead of failing fast.

        After an inference pod restarts, the channel sits in reconnect backoff for up
        to a couple of seconds although the new server is already SERVING; failing
        every call in that window would turn a rolling update into errors. If the
        channel is not ready within the grace, the call goes ahead and fails fast
        with UNAVAILABLE as usual.
        """
        if self._channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return
        grace = self._connect_grace_s if timeout_s is None else min(self._connect_grace_s, timeout_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._channel.channel_ready(), grace)

    async def classify(self, text: str, timeout_s: float | None) -> tuple[SentimentResult, Usage]:
        await self._connected(timeout_s)
        try:
            r = await self._stub.Classify(
                inference_pb2.ClassifyRequest(text=text), timeout=timeout_s, metadata=_metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise _downstream("inference", err) from None
        return convert.sentiment_from_pb(r.result, "result"), convert.usage_from_pb(r.usage)

    async def chat_stream(self, prompt: Prompt, timeout_s: float | None) -> AsyncIterator[InferenceChunk]:
        await self._connected(timeout_s)
        call = self._stub.ChatStream(chat_stream_request_to_pb(prompt), timeout=timeout_s, metadata=_metadata())
        try:
            async for r in call:
                if r.HasField("finish_reason"):
                    yield InferenceChunk(r.delta, convert.finish_from_pb(r.finish_reason), convert.usage_from_pb(r.usage))
                else:
                    yield InferenceChunk(r.delta)
        except grpc.aio.AioRpcError as err:
            raise _downstream("inference", err) from None
        finally:
            call.cancel()  # no-op when finished; stops decoding when our caller went away

    async def model_identity(self) -> ModelIdentity:
        try:
            r = await self._stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5.0, metadata=_metadata())
        except grpc.aio.AioRpcError as err:
            raise _downstream("inference", err) from None
        return model_identity_from_pb(r)
