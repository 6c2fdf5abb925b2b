"""Protobuf <-> domain conversions both ways, and the SDK's channel and metadata options and requests."""

from __future__ import annotations

import json

from gateway import wire
from gateway.core.types import (
    AnalyzeOutcome,
    CacheInfo,
    CacheStatus,
    ChatOutcome,
    ClassifyOutcome,
    Policy,
    Timings,
)
from gateway.sdk import ClientOptions, ClientTLS, base
from reprise.domain import Decoding, Finish, Label, Role, SentimentResult, Turn, Usage
from reprise.gateway.v1 import gateway_pb2 as pb


def test_policy_round_trip_keeps_unset_fields_unset() -> None:
    for policy in (Policy(), Policy(no_cache=True, exact_only=False, min_similarity=0.5, ttl_s=9, max_age_s=0, cache_sampled=True)):
        assert wire.policy_from_pb(wire.policy_to_pb(policy)) == policy
    assert not wire.policy_to_pb(Policy()).HasField("exact_only")


def test_analyze_round_trip_keeps_each_part() -> None:
    info = CacheInfo(CacheStatus.SEMANTIC, 0.91, "earlier text", key="k", rejected_reason="", store=False)
    s = ClassifyOutcome(SentimentResult(Label.NEGATIVE, 0.8), CacheInfo(CacheStatus.MISS, key="k2", store=True),
                        Usage(10, 8, 0), Timings(5.0, 1.0, 4.0, {"lookup": 1.0, "inference": 4.0}))
    c = ChatOutcome("reply", Finish.LENGTH, info, Usage(20, 12, 3), Timings(7.0, 7.0, 0.0, {"lookup": 7.0}))
    msg = wire.analyze_response(AnalyzeOutcome(s, c))
    assert msg.usage.prompt_tokens == 30 and msg.timings.total_ms == 7.0
    assert dict(msg.timings.stages_ms) == {"sentiment.lookup": 1.0, "sentiment.inference": 4.0, "chat.lookup": 7.0}
    back = wire.analyze_outcome(msg)
    assert back.sentiment is not None and back.chat is not None
    assert back.sentiment.result.label is Label.NEGATIVE and back.sentiment.usage == s.usage
    assert back.chat.cache.matched_text == "earlier text" and back.chat.cache.status is CacheStatus.SEMANTIC
    assert back.chat.finish is Finish.LENGTH and back.chat.timings.stages_ms == {"lookup": 7.0}
    only = wire.analyze_outcome(wire.analyze_response(AnalyzeOutcome(s, None)))
    assert only.chat is None and only.sentiment is not None


def test_sdk_retries_unavailable_through_the_service_config() -> None:
    args = dict(ClientOptions("h:1", attempts=4).channel_args())
    assert args["grpc.enable_retries"] == 1
    config = json.loads(args["grpc.service_config"])  # type: ignore[arg-type]
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 4
    assert config["methodConfig"][0]["name"] == [{"service": "reprise.gateway.v1.Gateway"}]
    assert "grpc.service_config" not in dict(ClientOptions("h:1", attempts=1).channel_args())
    tls = dict(ClientOptions("h:1", tls=ClientTLS(ca="ca.pem", server_name="gw.internal")).channel_args())
    assert tls["grpc.ssl_target_name_override"] == "gw.internal"


def test_sdk_metadata_carries_request_id_and_token() -> None:
    md = dict(ClientOptions(token="tok").metadata("rid-1"))
    assert md == {"x-request-id": "rid-1", "authorization": "Bearer tok"}
    generated = dict(ClientOptions().metadata(None))
    assert len(generated["x-request-id"]) == 16 and "authorization" not in generated


def test_sdk_chat_and_chat_stream_requests_carry_the_same_fields() -> None:
    args = ("and now?", (Turn(Role.USER, "hi"), Turn(Role.ASSISTANT, "hello")), "be brief",
            Decoding(max_new_tokens=5, temperature=0.0), Policy(exact_only=True), (b"png",))
    chat, stream = base.chat_request(*args), base.chat_stream_request(*args)
    assert isinstance(chat, pb.ChatRequest) and isinstance(stream, pb.ChatStreamRequest)
    assert chat.SerializeToString() == stream.SerializeToString()  # same field numbers, same values
    assert chat.text == "and now?" and chat.system_prompt == "be brief" and len(chat.history) == 2
    assert chat.decoding.max_new_tokens == 5 and chat.cache.exact_only and list(chat.images) == [b"png"]
    assert not base.chat_request("hi", (), None, None, None).HasField("system_prompt")
