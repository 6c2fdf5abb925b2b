"""Stats per tenant: a tenant sees its own figures, an operator token the replica's totals (issue 24, item 6).

Before: tenant B's Stats showed tenant A's rejected-overload count and hot-entry count.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gateway_fakes import FakeCache, FakeInference

from gateway.auth import Authenticator, TokenTable
from gateway.core.flow import Gateway, GatewayConfig
from gateway.core.types import ALL_TENANTS, Policy
from reprise.errors import ResourceExhausted

OPERATOR = "operator-token-0123456789abcdef"


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    g = Gateway(FakeCache(), FakeInference(), GatewayConfig(cache_timeout_s=0.05, max_model_in_flight=2))
    await g.start()
    await asyncio.sleep(0)  # the invalidation watch subscribes: the hot layer serves
    yield g
    await g.close()


async def test_a_tenant_sees_only_its_own_overload_hot_entries_and_load(gw: Gateway) -> None:
    inference: FakeInference = gw._inference  # type: ignore[attr-defined]
    await gw.classify("team-a", "a good day", Policy())
    for _ in range(5):
        await asyncio.sleep(0)  # the write-back lands in the hot layer
    inference.gate = asyncio.Event()
    busy = [asyncio.ensure_future(gw.classify("team-a", f"busy {i}", Policy())) for i in range(2)]
    await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted):
        await gw.classify("team-a", "one more", Policy())

    a, b = await gw.stats("team-a"), await gw.stats("team-b")
    assert a.rejected_overload == 1 and a.hot_entries == 1 and a.model_in_flight == 2 and a.counters.requests == 1
    assert b.rejected_overload == 0 and b.hot_entries == 0 and b.model_in_flight == 0 and b.in_flight == 0
    assert b.counters.requests == 0 and b.tenant == "team-b"

    everyone = await gw.stats(None)
    assert everyone.tenant == ALL_TENANTS and everyone.rejected_overload == 1 and everyone.model_in_flight == 2
    inference.gate.set()
    await asyncio.gather(*busy)
    assert (await gw.stats("team-a")).model_in_flight == 0 and gw.model_calls.in_flight_by == {}


def test_operator_tokens_are_recognised_and_do_not_authenticate_tenant_calls() -> None:
    auth = Authenticator(TokenTable([("tenant-a-token-0123456789abcdef", "team-a")]), operator_tokens=[OPERATOR])
    assert auth.is_operator((("authorization", f"Bearer {OPERATOR}"),))
    assert not auth.is_operator((("authorization", "Bearer tenant-a-token-0123456789abcdef"),))
    assert not auth.is_operator(())
    assert not Authenticator().is_operator((("authorization", f"Bearer {OPERATOR}"),))
    with pytest.raises(ValueError):
        Authenticator(operator_tokens=["short"])
