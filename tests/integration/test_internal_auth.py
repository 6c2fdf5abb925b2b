"""Internal calls are authenticated: inference answers only a client holding the gateway's certificate (issue 24, item 2).

Before: inference answered Chat from anyone who could reach it, and the cache
sidecar listened on 0.0.0.0 in plaintext. Now the inference service requires a
client certificate from the internal CA (``--tls-client-ca``), the gateway
presents one, and the cache binds the pod's loopback only (checked on the
manifests in tests/deploy/test_k8s_internal_auth.py and on ``make up`` in
tests/faults/test_make_up.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway.core.flow import GatewayConfig
from gateway.server import GatewayApp
from inference_svc.core.engine import EngineConfig
from inference_svc.server import InferenceApp
from devtools.devcerts import INFERENCE_NAME, InternalCerts, make_internal_certs
from reprise.gateway.v1 import gateway_pb2 as gpb
from reprise.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc
from reprise.rpc.server import ServerOptions, ServiceHost
from reprise.rpc.tls import ClientTLS, ServerTLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> InternalCerts:
    return make_internal_certs(tmp_path_factory.mktemp("internal-tls"))


@pytest.fixture(scope="module")
async def inference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, certs: InternalCerts) -> AsyncIterator[ServiceHost]:
    app = InferenceApp(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"), max_new_tokens=4))
    tls = ServerTLS(cert=certs.inference_cert, key=certs.inference_key, client_ca=certs.ca)
    host = ServiceHost(app, ServerOptions(port=0, tls=tls))
    await host.start()
    yield host
    await host.stop(0)


def _options(name: str = INFERENCE_NAME) -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", name)]


async def _refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.InferenceStub(channel).Chat(pb.ChatRequest(text="who are you?"), timeout=5)
    return err.value


async def test_clients_without_the_gateway_certificate_are_refused(
    inference: ServiceHost, certs: InternalCerts, tmp_path: Path
) -> None:
    plain = await _refused(grpc.aio.insecure_channel(inference.address))
    assert plain.code() == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the server but shows no client certificate: the handshake fails.
    anonymous = ClientTLS(ca=certs.ca).credentials()
    err = await _refused(grpc.aio.secure_channel(inference.address, anonymous, options=_options()))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA (anyone can make one) is no better.
    other = make_internal_certs(tmp_path / "other")
    forged = ClientTLS(ca=certs.ca, cert=other.gateway_cert, key=other.gateway_key).credentials()
    err = await _refused(grpc.aio.secure_channel(inference.address, forged, options=_options()))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_gateway_with_its_certificate_is_served(inference: ServiceHost, cache_host: ServiceHost, certs: InternalCerts) -> None:
    tls = ClientTLS(ca=certs.ca, cert=certs.gateway_cert, key=certs.gateway_key, server_name=INFERENCE_NAME)
    async with grpc.aio.secure_channel(inference.address, tls.credentials(), options=_options()) as channel:
        reply = await pb_grpc.InferenceStub(channel).Chat(pb.ChatRequest(text="hello"), timeout=30)
        assert reply.usage.completion_tokens > 0
    app = GatewayApp(cache_host.address, inference.address, GatewayConfig(cache_timeout_s=2.0), inference_tls=tls)
    gateway = ServiceHost(app, ServerOptions(port=0))
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            out = await gpb_grpc.GatewayStub(channel).Classify(
                gpb.ClassifyRequest(text="mTLS all the way", cache=gpb.CachePolicy(no_cache=True, no_store=True)), timeout=30
            )
        assert out.result.label in (1, 2)
    finally:
        await gateway.stop(0)
