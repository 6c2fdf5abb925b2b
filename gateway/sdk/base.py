"""What the blocking and the asyncio client share: options, channel options, metadata, requests."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from gateway import wire
from gateway.core.types import Policy, Prompt
from reprise import convert
from reprise.domain import Decoding, Turn
from reprise.errors import ServiceError, from_status
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.rpc.channel import channel_options, retry_service_config
from reprise.rpc.logs import REQUEST_ID_HEADER
from reprise.rpc.tls import ClientTLS

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Gateway"].full_name


@dataclass(frozen=True)
class ClientOptions:
    """Where the gateway is and how to talk to it."""

    target: str = "127.0.0.1:50050"
    #: Bearer token (the gateway maps it to a tenant); None when auth is off.
    token: str | None = None
    #: TLS to the gateway (``ClientTLS(ca=...)``; add ``cert``/``key`` for mTLS). None: plaintext.
    tls: ClientTLS | None = None
    #: Default deadline of a call in seconds (a stream's whole duration).
    timeout_s: float = 60.0
    #: Attempts per call on UNAVAILABLE, gRPC retry policy with backoff (1: no retry; gRPC caps it at 5).
    attempts: int = 3
    max_message_bytes: int = 4 * 1024 * 1024

    def channel_args(self) -> list[tuple[str, object]]:
        config = retry_service_config([SERVICE_NAME], max_attempts=self.attempts) if self.attempts > 1 else None
        options = channel_options(self.max_message_bytes, service_config=config)
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        rid = request_id or uuid.uuid4().hex[:16]
        if self.token:
            return ((REQUEST_ID_HEADER, rid), ("authorization", f"Bearer {self.token}"))
        return ((REQUEST_ID_HEADER, rid),)


#: What gRPC says when the two ends disagree about TLS: a plaintext client sees the TLS server close
#: the connection; a TLS client sees a plaintext server's bytes where a TLS record should be.
_PLAINTEXT_TO_TLS = ("Socket closed", "Connection reset")
_TLS_TO_PLAINTEXT = ("WRONG_VERSION_NUMBER", "Handshake failed", "handshake")


def to_error(err: grpc.RpcError, tls: bool | None = None) -> ServiceError:
    """The typed error for a failed call (keeps the status code).

    ``tls``: whether this client used TLS. A connection that fails the way a
    TLS mismatch does gets a hint, instead of a bare "failed to connect".
    """
    code = err.code()  # type: ignore[attr-defined]
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() or ""  # type: ignore[attr-defined]
    if name == "UNAVAILABLE" and tls is not None:
        if not tls and any(s in details for s in _PLAINTEXT_TO_TLS):
            details += " (the gateway closed a plaintext connection: if it serves TLS, pass its CA: --tls-ca / ClientOptions.tls)"
        elif tls and any(s in details for s in _TLS_TO_PLAINTEXT):
            details += " (the TLS handshake failed: a plaintext gateway needs no --tls-ca; else check the CA and server name)"
    return from_status(name, details)


def classify_request(text: str, policy: Policy | None) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(text=text, cache=wire.policy_to_pb(policy or Policy()))


#: The two chat request messages, which have the same fields.
ChatMessage = TypeVar("ChatMessage", pb.ChatRequest, pb.ChatStreamRequest)


def chat_message(
    message: type[ChatMessage],
    text: str,
    history: Sequence[Turn],
    system_prompt: str | None,
    decoding: Decoding | None,
    policy: Policy | None,
    images: Sequence[bytes] = (),
) -> ChatMessage:
    """A ``message`` (ChatRequest or ChatStreamRequest) asking for one chat turn."""
    prompt = Prompt(text, tuple(history), system_prompt, decoding or Decoding(), tuple(images))
    return message(**wire.chat_fields(prompt, policy or Policy()))  # type: ignore[arg-type]


#: ``chat_request(text, history, system_prompt, decoding, policy, images=())``: Chat's request.
chat_request = functools.partial(chat_message, pb.ChatRequest)
#: The same for ChatStream.
chat_stream_request = functools.partial(chat_message, pb.ChatStreamRequest)


def analyze_request(text: str, decoding: Decoding | None, policy: Policy | None, tasks: Sequence[str]) -> pb.AnalyzeRequest:
    return pb.AnalyzeRequest(
        text=text,
        decoding=convert.decoding_to_pb(decoding or Decoding()),
        cache=wire.policy_to_pb(policy or Policy()),
        tasks=list(tasks),
    )
