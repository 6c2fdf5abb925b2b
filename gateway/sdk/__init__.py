"""Typed Python clients of the Reprise gateway, blocking and asyncio.

    from gateway.sdk import Client, ClientOptions, Policy

    with Client(ClientOptions("127.0.0.1:50050", token="...")) as client:
        r = client.classify("I love this phone")
        print(r.result.label, r.result.probability, r.cache.status, r.timings.total_ms)
        for piece in client.chat_stream("Tell me a joke"):
            print(piece.delta, end="")

Every call has a deadline (``ClientOptions.timeout_s`` unless given per call),
is retried by gRPC on UNAVAILABLE (``ClientOptions.attempts``), carries an
``x-request-id`` (generated unless given) and, with a token, the bearer token.
Errors are raised as :class:`reprise.errors.ServiceError` subclasses whose
``code`` is the gRPC status name (``Unauthenticated``, ``ResourceExhausted``, ...).
"""

from gateway.core.types import (
    AnalyzeOutcome,
    CacheInfo,
    CacheStatus,
    ChatDelta,
    ChatOutcome,
    ClassifyOutcome,
    GatewayStats,
    Policy,
    Timings,
)
from gateway.sdk.aio import AsyncClient
from gateway.sdk.base import ClientOptions
from gateway.sdk.sync import Client
from reprise.domain import Decoding, Finish, Label, Role, SentimentResult, Turn, Usage
from reprise.errors import ServiceError
from reprise.rpc.tls import ClientTLS

__all__ = [
    "AnalyzeOutcome",
    "AsyncClient",
    "CacheInfo",
    "CacheStatus",
    "ChatDelta",
    "ChatOutcome",
    "ClassifyOutcome",
    "Client",
    "ClientOptions",
    "ClientTLS",
    "Decoding",
    "Finish",
    "GatewayStats",
    "Label",
    "Policy",
    "Role",
    "SentimentResult",
    "ServiceError",
    "Timings",
    "Turn",
    "Usage",
]
