"""How the gateway reports a status its dependencies returned, and what it sends them."""

from __future__ import annotations

import grpc
import pytest

from gateway.clients import _downstream, cache_query_to_pb, chat_stream_request_to_pb
from gateway.core.types import CacheRequest, ModelIdentity, Prompt
from reprise.domain import Decoding, Role, Turn
from reprise.errors import Unavailable


def _err(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED]
)
def test_a_dependency_status_is_kept_and_names_the_dependency(code: grpc.StatusCode) -> None:
    err = _downstream("inference", _err(code, "queue is full"))
    assert err.code == code.name
    assert err.message == "inference: queue is full"


def test_a_call_the_dependency_dropped_is_unavailable_so_callers_retry() -> None:
    # grpc-core cancels a call that arrives as the server starts its graceful shutdown;
    # our own caller leaving never shows up as a status (it cancels our task instead).
    err = _downstream("inference", _err(grpc.StatusCode.CANCELLED, "Cancelled"))
    assert isinstance(err, Unavailable)
    assert err.code == "UNAVAILABLE"
    assert "draining or restarting" in err.message


def test_the_prompt_goes_to_inference_as_the_caller_sent_it_and_an_empty_system_prompt_keys_like_none() -> None:
    history = (Turn(Role.USER, "hello"), Turn(Role.ASSISTANT, "hi"))
    prompt = Prompt("and now?", history, "", Decoding(max_new_tokens=8), (b"png",))
    msg = chat_stream_request_to_pb(prompt)
    assert msg.text == "and now?" and len(msg.history) == 2 and msg.decoding.max_new_tokens == 8
    assert list(msg.images) == [b"png"] and msg.HasField("system_prompt") and msg.system_prompt == ""
    assert not chat_stream_request_to_pb(Prompt("and now?")).HasField("system_prompt")
    # For the cache (and every key the gateway keeps) "" and None both mean the model's default.
    assert Prompt("x", system_prompt="") == Prompt("x") and hash(Prompt("x", system_prompt="")) == hash(Prompt("x"))
    assert cache_query_to_pb(CacheRequest("ns", "chat", ModelIdentity("m", "r"), Prompt("x"))).system_prompt == ""
