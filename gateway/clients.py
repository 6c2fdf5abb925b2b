"""gRPC adapters implementing the gateway's ports against the cache and inference services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.core.types import CacheHit, CacheInfo, CacheRequest, CacheStatus, InferenceChunk, ModelIdentity, Policy
from reprise import convert
from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from reprise.domain import Answer, Decoding, SentimentResult, Turn, Usage
from reprise.errors import ServiceError, from_status
from reprise.inference.v1 import inference_pb2, inference_pb2_grpc
from reprise.rpc.logs import REQUEST_ID_HEADER, request_id


def _metadata() -> tuple[tuple[str, str], ...]:
    return ((REQUEST_ID_HEADER, request_id.get()),)


def _downstream(service: str, err: grpc.aio.AioRpcError) -> ServiceError:
    """Keep the status a dependency returned; say which dependency it was."""
    return from_status(err.code().name, f"{service}: {err.details()}")


def cache_query_to_pb(req: CacheRequest) -> cache_pb2.CacheQuery:
    return cache_pb2.CacheQuery(
        namespace=req.namespace,
        model_id=req.model.model_id,
        model_revision=req.model.revision,
        task=req.task,
        text=req.text,
        system_prompt=req.system_prompt,
        history=convert.turns_to_pb(req.history),
        decoding=convert.decoding_to_pb(req.decoding),
    )


class GrpcCache:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = cache_pb2_grpc.CacheStub(channel)

    async def lookup(self, request: CacheRequest, policy: Policy, timeout_s: float) -> CacheHit | None:
        msg = cache_pb2.LookupRequest(query=cache_query_to_pb(request), exact_only=bool(policy.exact_only))
        if policy.min_similarity is not None:
            msg.min_similarity = policy.min_similarity
        if policy.max_age_s is not None:
            msg.max_age_seconds = policy.max_age_s
        response = await self._stub.Lookup(msg, timeout=timeout_s, metadata=_metadata())
        if response.tier not in (cache_pb2.TIER_EXACT, cache_pb2.TIER_SEMANTIC):
            return None
        status = CacheStatus.EXACT if response.tier == cache_pb2.TIER_EXACT else CacheStatus.SEMANTIC
        return CacheHit(
            convert.answer_from_pb(response.entry.answer),
            CacheInfo(status, response.similarity, response.entry.text if status is CacheStatus.SEMANTIC else ""),
        )

    async def store(self, request: CacheRequest, answer: Answer, policy: Policy) -> None:
        msg = cache_pb2.StoreRequest(query=cache_query_to_pb(request), answer=convert.answer_to_pb(answer))
        if policy.ttl_s is not None:
            msg.ttl_seconds = policy.ttl_s
        await self._stub.Store(msg, timeout=2.0, metadata=_metadata())


class GrpcInference:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = inference_pb2_grpc.InferenceStub(channel)

    async def classify(self, text: str, timeout_s: float | None) -> tuple[SentimentResult, Usage]:
        try:
            r = await self._stub.Classify(
                inference_pb2.ClassifyRequest(text=text), timeout=timeout_s, metadata=_metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise _downstream("inference", err) from None
        return convert.sentiment_from_pb(r.result, "result"), convert.usage_from_pb(r.usage)

    async def chat_stream(
        self,
        history: tuple[Turn, ...],
        text: str,
        system_prompt: str | None,
        decoding: Decoding,
        timeout_s: float | None,
    ) -> AsyncIterator[InferenceChunk]:
        msg = inference_pb2.ChatStreamRequest(
            text=text, history=convert.turns_to_pb(history), decoding=convert.decoding_to_pb(decoding)
        )
        if system_prompt is not None:
            msg.system_prompt = system_prompt
        call = self._stub.ChatStream(msg, timeout=timeout_s, metadata=_metadata())
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
        return ModelIdentity(r.model_id, r.revision)
