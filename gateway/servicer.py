"""gRPC adapter of the gateway: the public API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.core.flow import Gateway
from gateway.core.types import CacheInfo, CacheStatus, Policy, Timings
from reprise import convert
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc

PUBLIC_NAMESPACE = "public"

_STATUS_TO_PB = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.EXACT: pb.CACHE_STATUS_EXACT,
    CacheStatus.SEMANTIC: pb.CACHE_STATUS_SEMANTIC,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
}


def policy_from_pb(p: pb.CachePolicy) -> Policy:
    return Policy(
        no_cache=p.no_cache,
        no_store=p.no_store,
        exact_only=p.exact_only if p.HasField("exact_only") else None,
        min_similarity=p.min_similarity if p.HasField("min_similarity") else None,
        ttl_s=p.ttl_seconds if p.HasField("ttl_seconds") else None,
        max_age_s=p.max_age_seconds if p.HasField("max_age_seconds") else None,
    )


def cache_info_to_pb(c: CacheInfo) -> pb.CacheInfo:
    return pb.CacheInfo(status=_STATUS_TO_PB[c.status], similarity=c.similarity, matched_text=c.matched_text)


def timings_to_pb(t: Timings) -> pb.Timings:
    return pb.Timings(total_ms=t.total_ms, cache_ms=t.cache_ms, inference_ms=t.inference_ms)


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's remaining deadline, propagated to the services behind us."""
    return context.time_remaining()


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        out = await self._gw.classify(PUBLIC_NAMESPACE, request.text, policy_from_pb(request.cache), _timeout(context))
        return pb.ClassifyResponse(
            result=convert.sentiment_to_pb(out.result),
            cache=cache_info_to_pb(out.cache),
            usage=convert.usage_to_pb(out.usage),
            timings=timings_to_pb(out.timings),
        )

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        out = await self._gw.chat(
            PUBLIC_NAMESPACE,
            convert.turns_from_pb(request.history),
            request.text,
            request.system_prompt if request.HasField("system_prompt") else None,
            convert.decoding_from_pb(request.decoding),
            policy_from_pb(request.cache),
            _timeout(context),
        )
        return pb.ChatResponse(
            reply=out.reply,
            finish_reason=convert.finish_to_pb(out.finish),
            cache=cache_info_to_pb(out.cache),
            usage=convert.usage_to_pb(out.usage),
            timings=timings_to_pb(out.timings),
        )

    async def ChatStream(
        self, request: pb.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatStreamResponse]:
        stream = self._gw.chat_stream(
            PUBLIC_NAMESPACE,
            convert.turns_from_pb(request.history),
            request.text,
            request.system_prompt if request.HasField("system_prompt") else None,
            convert.decoding_from_pb(request.decoding),
            policy_from_pb(request.cache),
            _timeout(context),
        )
        async for d in stream:
            msg = pb.ChatStreamResponse(delta=d.delta)
            if d.cache is not None:
                msg.cache.CopyFrom(cache_info_to_pb(d.cache))
            if d.timings is not None:
                msg.finish_reason = convert.finish_to_pb(d.finish)
                msg.usage.CopyFrom(convert.usage_to_pb(d.usage))
                msg.timings.CopyFrom(timings_to_pb(d.timings))
            yield msg

    async def Analyze(self, request: pb.AnalyzeRequest, context: grpc.aio.ServicerContext) -> pb.AnalyzeResponse:
        sentiment, reply = await self._gw.analyze(
            PUBLIC_NAMESPACE,
            request.text,
            convert.decoding_from_pb(request.decoding),
            policy_from_pb(request.cache),
            _timeout(context),
        )
        return pb.AnalyzeResponse(
            sentiment=convert.sentiment_to_pb(sentiment.result),
            sentiment_cache=cache_info_to_pb(sentiment.cache),
            reply=reply.reply,
            finish_reason=convert.finish_to_pb(reply.finish),
            reply_cache=cache_info_to_pb(reply.cache),
            usage=convert.usage_to_pb(sentiment.usage + reply.usage),
            timings=pb.Timings(
                total_ms=max(sentiment.timings.total_ms, reply.timings.total_ms),
                cache_ms=max(sentiment.timings.cache_ms, reply.timings.cache_ms),
                inference_ms=max(sentiment.timings.inference_ms, reply.timings.inference_ms),
            ),
        )
