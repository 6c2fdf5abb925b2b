"""The tenant travels from the gateway to the services behind it in one metadata header."""

from __future__ import annotations

import contextvars

from gateway.clients import _metadata
from reprise.rpc.tenant import TENANT_HEADER, from_metadata, tenant


def test_the_gateways_calls_carry_the_tenant_its_servicer_resolved() -> None:
    def call() -> tuple[tuple[str, str], ...]:
        tenant.set("acme")
        return _metadata()

    assert (TENANT_HEADER, "acme") in contextvars.copy_context().run(call)
    assert TENANT_HEADER not in dict(_metadata())  # no tenant resolved (direct calls): no header


def test_a_service_reads_the_tenant_or_falls_back() -> None:
    assert from_metadata(((TENANT_HEADER, "acme"), ("x-request-id", "1")), "-") == "acme"
    assert from_metadata((("x-request-id", "1"),), "-") == "-"
    assert from_metadata(None, "-") == "-"
