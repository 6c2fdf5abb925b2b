"""Client channels between services: message limits, keepalive, retries via service config."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from reprise.rpc.tls import ClientTLS


def retry_service_config(services: Sequence[str], max_attempts: int = 3) -> str:
    """A gRPC service config that retries UNAVAILABLE with backoff on every method of ``services``.

    Retries happen inside the gRPC library, before any response byte reached
    the caller, so they are safe for the non-idempotent-looking but
    side-effect-free calls Reprise makes.
    """
    return json.dumps(
        {
            # Balance over every address the name resolves to: with a headless Kubernetes
            # Service (dns:///name:port) that is every pod; one address behaves as pick_first.
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": s} for s in services],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel_options(
    max_message_bytes: int = 16 * 1024 * 1024, service_config: str | None = None
) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if service_config:
        options += [("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
    return options


# A restarted cache or inference must be found again within a second or two: gRPC's default
# reconnect backoff grows to two minutes, during which every call would fail fast.
_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def aio_channel(
    target: str,
    tls: ClientTLS | None = None,
    *,
    max_message_bytes: int = 16 * 1024 * 1024,
    service_config: str | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel from one Reprise service to another (``host:port``), TLS when ``tls`` is given."""
    options = channel_options(max_message_bytes, service_config) + _RECONNECT
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)
