"""Shared fixtures: a private redis-server, the tiny test model, and the three services in-process.

The services run as real ``grpc.aio`` servers on ``127.0.0.1:0`` inside the
test process (one session event loop), talking to each other over loopback
exactly as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from cache_svc.server import CacheApp
from gateway.core.flow import GatewayConfig
from gateway.server import GatewayApp
from inference_svc.core.engine import EngineConfig
from inference_svc.server import InferenceApp
from devtools.devstack import RedisServer
from reprise.rpc.server import ServerOptions, ServiceHost
from tests.support.tiny_model import build_tiny_model


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tier by folder: tests/unit -> unit, tests/integration -> integration (markers are registered)."""
    for item in items:
        path = Path(str(item.fspath))
        if "unit" in path.parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
async def inference_host(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceHost]:
    app = InferenceApp(
        EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("model-cache"), max_new_tokens=16)
    )
    host = ServiceHost(app, ServerOptions(port=0))
    await host.start()
    yield host
    await host.stop(0)


async def start_cache(redis_url: str, **kwargs: object) -> ServiceHost:
    host = ServiceHost(CacheApp(redis_url, **kwargs), ServerOptions(port=0))  # type: ignore[arg-type]
    await host.start()
    return host


async def start_gateway(cache_address: str, inference_address: str, config: GatewayConfig | None = None) -> ServiceHost:
    host = ServiceHost(GatewayApp(cache_address, inference_address, config or GatewayConfig()), ServerOptions(port=0))
    await host.start()
    return host


@pytest.fixture(scope="session")
async def cache_host(redis_server: RedisServer) -> AsyncIterator[ServiceHost]:
    host = await start_cache(redis_server.url)
    yield host
    await host.stop(0)


@pytest.fixture(scope="session")
async def gateway_host(cache_host: ServiceHost, inference_host: ServiceHost) -> AsyncIterator[ServiceHost]:
    # A generous cache budget: CI machines are slow and a timeout would turn hits into misses.
    host = await start_gateway(cache_host.address, inference_host.address, GatewayConfig(cache_timeout_s=2.0))
    yield host
    await host.stop(0)


@pytest.fixture
async def channel_to() -> AsyncIterator[object]:
    """``await channel_to(host)`` opens a channel closed after the test."""
    channels: list[grpc.aio.Channel] = []

    def open_channel(host: ServiceHost) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(host.address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()
