"""Protobuf <-> gateway domain types, both directions: the servicer and the SDK share these."""

from __future__ import annotations

from reprise import convert
from reprise.domain import Usage
from reprise.gateway.v1 import gateway_pb2 as pb

from gateway.core.types import (
    AnalyzeOutcome,
    CacheInfo,
    CacheStatus,
    ChatDelta,
    ChatOutcome,
    ClassifyOutcome,
    GatewayStats,
    ModelIdentity,
    Policy,
    Prompt,
    TenantStats,
    Timings,
)

_STATUS_TO_PB = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.EXACT: pb.CACHE_STATUS_EXACT,
    CacheStatus.SEMANTIC: pb.CACHE_STATUS_SEMANTIC,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


# -- policy ------------------------------------------------------------------------------------


def policy_from_pb(p: pb.CachePolicy) -> Policy:
    return Policy(
        no_cache=p.no_cache,
        no_store=p.no_store,
        exact_only=p.exact_only if p.HasField("exact_only") else None,
        min_similarity=p.min_similarity if p.HasField("min_similarity") else None,
        ttl_s=p.ttl_seconds if p.HasField("ttl_seconds") else None,
        max_age_s=p.max_age_seconds if p.HasField("max_age_seconds") else None,
        cache_sampled=p.cache_sampled if p.HasField("cache_sampled") else None,
    )


def policy_to_pb(p: Policy) -> pb.CachePolicy:
    msg = pb.CachePolicy(no_cache=p.no_cache, no_store=p.no_store)
    if p.exact_only is not None:
        msg.exact_only = p.exact_only
    if p.min_similarity is not None:
        msg.min_similarity = p.min_similarity
    if p.ttl_s is not None:
        msg.ttl_seconds = p.ttl_s
    if p.max_age_s is not None:
        msg.max_age_seconds = p.max_age_s
    if p.cache_sampled is not None:
        msg.cache_sampled = p.cache_sampled
    return msg


# -- prompt ------------------------------------------------------------------------------------


def prompt_from_pb(r: pb.ChatRequest | pb.ChatStreamRequest) -> Prompt:
    """The prompt of a Chat or ChatStream request, as the gateway passes it down whole."""
    return convert.chat_from_pb(r, Prompt)  # the fields every service's chat request shares


def chat_fields(prompt: Prompt, policy: Policy) -> dict[str, object]:
    """The fields of a ChatRequest or ChatStreamRequest (the two messages have the same ones)."""
    fields: dict[str, object] = dict(
        text=prompt.text,
        history=convert.turns_to_pb(prompt.history),
        decoding=convert.decoding_to_pb(prompt.decoding),
        cache=policy_to_pb(policy),
        images=list(prompt.images),
    )
    if prompt.system_prompt is not None:
        fields["system_prompt"] = prompt.system_prompt
    return fields


# -- cache info and timings -------------------------------------------------------------------


def cache_info_to_pb(c: CacheInfo) -> pb.CacheInfo:
    return pb.CacheInfo(
        status=_STATUS_TO_PB[c.status],
        similarity=c.similarity,
        matched_text=c.matched_text,
        key=c.key,
        hot=c.hot,
        reason=c.reason,
        store=c.store,
        coalesced=c.coalesced,
        rejected_reason=c.rejected_reason,
    )


def cache_info_from_pb(c: pb.CacheInfo) -> CacheInfo:
    return CacheInfo(
        status=_STATUS_FROM_PB.get(c.status, CacheStatus.BYPASS),
        similarity=c.similarity,
        matched_text=c.matched_text,
        key=c.key,
        hot=c.hot,
        reason=c.reason,
        store=c.store,
        coalesced=c.coalesced,
        rejected_reason=c.rejected_reason,
    )


def timings_to_pb(t: Timings) -> pb.Timings:
    return pb.Timings(total_ms=t.total_ms, cache_ms=t.cache_ms, inference_ms=t.inference_ms, stages_ms=t.stages_ms)


def timings_from_pb(t: pb.Timings) -> Timings:
    return Timings(t.total_ms, t.cache_ms, t.inference_ms, dict(t.stages_ms))


# -- responses (servicer side) ------------------------------------------------------------------


def classify_response(out: ClassifyOutcome) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        result=convert.sentiment_to_pb(out.result),
        cache=cache_info_to_pb(out.cache),
        usage=convert.usage_to_pb(out.usage),
        timings=timings_to_pb(out.timings),
    )


def chat_response(out: ChatOutcome) -> pb.ChatResponse:
    return pb.ChatResponse(
        reply=out.reply,
        finish_reason=convert.finish_to_pb(out.finish),
        cache=cache_info_to_pb(out.cache),
        usage=convert.usage_to_pb(out.usage),
        timings=timings_to_pb(out.timings),
    )


def chat_stream_response(d: ChatDelta) -> pb.ChatStreamResponse:
    msg = pb.ChatStreamResponse(delta=d.delta)
    if d.cache is not None:
        msg.cache.CopyFrom(cache_info_to_pb(d.cache))
    if d.timings is not None:
        msg.finish_reason = convert.finish_to_pb(d.finish)
        msg.usage.CopyFrom(convert.usage_to_pb(d.usage or Usage()))
        msg.timings.CopyFrom(timings_to_pb(d.timings))
    return msg


def analyze_response(out: AnalyzeOutcome) -> pb.AnalyzeResponse:
    msg = pb.AnalyzeResponse()
    usage = Usage()
    parts: dict[str, Timings] = {}
    if out.sentiment is not None:
        msg.sentiment.CopyFrom(convert.sentiment_to_pb(out.sentiment.result))
        msg.sentiment_cache.CopyFrom(cache_info_to_pb(out.sentiment.cache))
        msg.sentiment_usage.CopyFrom(convert.usage_to_pb(out.sentiment.usage))
        msg.sentiment_timings.CopyFrom(timings_to_pb(out.sentiment.timings))
        usage += out.sentiment.usage
        parts["sentiment"] = out.sentiment.timings
    if out.chat is not None:
        msg.reply = out.chat.reply
        msg.finish_reason = convert.finish_to_pb(out.chat.finish)
        msg.reply_cache.CopyFrom(cache_info_to_pb(out.chat.cache))
        msg.reply_usage.CopyFrom(convert.usage_to_pb(out.chat.usage))
        msg.reply_timings.CopyFrom(timings_to_pb(out.chat.timings))
        usage += out.chat.usage
        parts["chat"] = out.chat.timings
    msg.usage.CopyFrom(convert.usage_to_pb(usage))
    # The parts ran concurrently: the call took as long as the slower one.
    combined = Timings(
        max((t.total_ms for t in parts.values()), default=0.0),
        max((t.cache_ms for t in parts.values()), default=0.0),
        max((t.inference_ms for t in parts.values()), default=0.0),
        {f"{name}.{k}": v for name, t in parts.items() for k, v in t.stages_ms.items()},
    )
    msg.timings.CopyFrom(timings_to_pb(combined))
    return msg


def stats_response(s: GatewayStats) -> pb.StatsResponse:
    c = s.counters
    msg = pb.StatsResponse(
        tenant=s.tenant,
        counters=pb.TenantCounters(
            requests=c.requests,
            exact_hits=c.exact_hits,
            semantic_hits=c.semantic_hits,
            hot_hits=c.hot_hits,
            misses=c.misses,
            bypassed=c.bypassed,
            coalesced=c.coalesced,
            model_calls=c.model_calls,
        ),
        breaker_state=s.breaker_state,
        hot_active=s.hot_active,
        hot_entries=s.hot_entries,
        in_flight=s.in_flight,
        model_in_flight=s.model_in_flight,
        model_id=s.model.model_id if s.model else "",
        model_revision=s.model.revision if s.model else "",
        rejected_overload=s.rejected_overload,
    )
    if s.cache_entries is not None:
        msg.cache_entries = s.cache_entries
    return msg


# -- requests and responses (client side) -------------------------------------------------------


def classify_outcome(r: pb.ClassifyResponse) -> ClassifyOutcome:
    return ClassifyOutcome(
        convert.sentiment_from_pb(r.result, "result"),
        cache_info_from_pb(r.cache),
        convert.usage_from_pb(r.usage),
        timings_from_pb(r.timings),
    )


def chat_outcome(r: pb.ChatResponse) -> ChatOutcome:
    return ChatOutcome(
        r.reply,
        convert.finish_from_pb(r.finish_reason),
        cache_info_from_pb(r.cache),
        convert.usage_from_pb(r.usage),
        timings_from_pb(r.timings),
    )


def chat_delta(r: pb.ChatStreamResponse) -> ChatDelta:
    last = r.HasField("finish_reason")
    return ChatDelta(
        r.delta,
        cache=cache_info_from_pb(r.cache) if r.HasField("cache") else None,
        finish=convert.finish_from_pb(r.finish_reason) if last else None,
        usage=convert.usage_from_pb(r.usage) if last else None,
        timings=timings_from_pb(r.timings) if last else None,
    )


def analyze_outcome(r: pb.AnalyzeResponse) -> AnalyzeOutcome:
    sentiment = chat = None
    if r.HasField("sentiment"):
        sentiment = ClassifyOutcome(
            convert.sentiment_from_pb(r.sentiment, "sentiment"),
            cache_info_from_pb(r.sentiment_cache),
            convert.usage_from_pb(r.sentiment_usage),
            timings_from_pb(r.sentiment_timings),
        )
    if r.HasField("reply_cache"):
        chat = ChatOutcome(
            r.reply,
            convert.finish_from_pb(r.finish_reason),
            cache_info_from_pb(r.reply_cache),
            convert.usage_from_pb(r.reply_usage),
            timings_from_pb(r.reply_timings),
        )
    return AnalyzeOutcome(sentiment, chat)


def stats_from_pb(r: pb.StatsResponse) -> GatewayStats:
    c = r.counters
    return GatewayStats(
        tenant=r.tenant,
        counters=TenantStats(
            c.requests, c.exact_hits, c.semantic_hits, c.hot_hits, c.misses, c.bypassed, c.coalesced, c.model_calls
        ),
        breaker_state=r.breaker_state,
        hot_active=r.hot_active,
        hot_entries=r.hot_entries,
        in_flight=r.in_flight,
        model_in_flight=r.model_in_flight,
        cache_entries=r.cache_entries if r.HasField("cache_entries") else None,
        model=ModelIdentity(r.model_id, r.model_revision) if r.model_id else None,
        rejected_overload=r.rejected_overload,
    )
