"""How the gateway reports a status its dependencies returned."""

from __future__ import annotations

import grpc
import pytest

from gateway.clients import _downstream
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
