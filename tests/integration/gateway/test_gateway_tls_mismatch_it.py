"""A client whose TLS setting does not match the gateway's fails at once and says why (issue 24, item 8).

Before: a plaintext client against the TLS gateway waited for its deadline and printed
"context deadline exceeded". The SDK (and so the CLI) now gets UNAVAILABLE from the first
failed connection, with a hint naming the TLS mismatch.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway_support import start_gateway_host

from gateway.sdk import Client as GatewayClient
from gateway.sdk import ClientOptions
from devtools.devcerts import InternalCerts, make_internal_certs
from reprise.errors import Unavailable
from reprise.rpc.server import ServiceHost
from reprise.rpc.tls import ClientTLS, ServerTLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> InternalCerts:
    return make_internal_certs(tmp_path_factory.mktemp("gateway-tls"))


@pytest.fixture(scope="module")
async def tls_gateway(cache_host, inference_host, certs: InternalCerts) -> AsyncIterator[ServiceHost]:  # type: ignore[no-untyped-def]
    host = await start_gateway_host(
        cache_host.address, inference_host.address, tls=ServerTLS(cert=certs.inference_cert, key=certs.inference_key)
    )
    yield host
    await host.stop(0)


async def test_a_plaintext_client_against_the_tls_gateway_fails_at_once_with_a_hint(tls_gateway: ServiceHost) -> None:
    # A deadline of ten minutes: only a connection failure, not the deadline, can end this call in a test run.
    options = ClientOptions(tls_gateway.address, timeout_s=600)
    with GatewayClient(options) as client:
        with pytest.raises(Unavailable, match="if it serves TLS, pass its CA"):
            await asyncio.to_thread(client.classify, "hello")


async def test_a_tls_client_against_a_plaintext_gateway_gets_a_hint(gateway_host: ServiceHost, certs: InternalCerts) -> None:
    options = ClientOptions(gateway_host.address, timeout_s=600, tls=ClientTLS(ca=certs.ca))
    with GatewayClient(options) as client:
        with pytest.raises(Unavailable, match="TLS handshake failed"):
            await asyncio.to_thread(client.classify, "hello")


async def test_the_cli_says_so_too(tls_gateway: ServiceHost, certs: InternalCerts) -> None:
    root = Path(__file__).resolve().parents[3]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--target", tls_gateway.address, "--timeout", "600", "classify", "hi",
        cwd=root, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0 and b"if it serves TLS, pass its CA" in err
    ok = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--target", tls_gateway.address, "--tls-ca", certs.ca, "classify", "hi",
        cwd=root, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(ok.communicate(), 120)
    assert ok.returncode == 0, err
