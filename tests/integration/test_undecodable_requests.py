"""Bytes that are not a valid request (a string field that is not UTF-8) get INVALID_ARGUMENT (issue 24, item 4).

Before: grpc's own deserializer raised, the caller got UNKNOWN ("Unexpected
DecodeError") and every call logged a 7-line traceback.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from reprise.rpc.server import ServiceHost

# ClassifyRequest / ChatRequest field 1 (text), length-delimited, holding bytes that are not UTF-8.
NOT_UTF8 = b"\x0a\x04\xff\xfe\xc3\x28"


async def _raw_call(host: ServiceHost, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(payload, timeout=10)
    return err.value


@pytest.mark.parametrize(
    "service, method, payload",
    [
        ("gateway", "/reprise.gateway.v1.Gateway/Classify", NOT_UTF8),
        ("gateway", "/reprise.gateway.v1.Gateway/Chat", NOT_UTF8),
        ("inference", "/reprise.inference.v1.Inference/Classify", NOT_UTF8),
        # LookupRequest.query (field 1) holding a CacheQuery whose namespace (field 1) is not UTF-8.
        ("cache", "/reprise.cache.v1.Cache/Lookup", b"\x0a" + bytes([len(NOT_UTF8)]) + NOT_UTF8),
    ],
)
async def test_undecodable_bytes_are_invalid_argument_with_one_log_line(
    service: str, method: str, payload: bytes, gateway_host: ServiceHost, inference_host: ServiceHost, cache_host: ServiceHost,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = {"gateway": gateway_host, "inference": inference_host, "cache": cache_host}[service]
    caplog.set_level(logging.INFO)
    err = await _raw_call(host, method, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("request: is not a valid reprise.") and "UTF-8" in err.details()
    about = [r for r in caplog.records if "is not a valid" in r.getMessage()]
    assert len(about) == 1 and about[0].exc_info is None
    assert not [r for r in caplog.records if r.exc_info is not None or "Traceback" in r.getMessage()]


async def test_undecodable_stream_request_is_invalid_argument(gateway_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(gateway_host.address) as channel:
        call = channel.unary_stream(
            "/reprise.gateway.v1.Gateway/ChatStream", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [m async for m in call(NOT_UTF8, timeout=10)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
