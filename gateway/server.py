"""Composition root of the gateway: config, channels to cache and inference, flow, servicer, host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from gateway.clients import GrpcCache, GrpcInference
from gateway.core.flow import Gateway, GatewayConfig
from gateway.servicer import GatewayServicer
from reprise.cache.v1 import cache_pb2
from reprise.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from reprise.inference.v1 import inference_pb2
from reprise.rpc.channel import aio_channel, retry_service_config
from reprise.rpc.config import (
    EnvArgumentParser,
    add_client_tls_options,
    add_server_options,
    client_tls,
    server_options,
)
from reprise.rpc.logs import configure_logging
from reprise.rpc.server import run_until_signal
from reprise.rpc.tls import ClientTLS

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
CACHE_SERVICE = cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name


class GatewayApp:
    name = "gateway"
    service_names = (SERVICE_NAME,)

    def __init__(
        self,
        cache_target: str,
        inference_target: str,
        config: GatewayConfig = GatewayConfig(),
        cache_tls: ClientTLS | None = None,
        inference_tls: ClientTLS | None = None,
    ) -> None:
        self._cache_channel = aio_channel(cache_target, cache_tls)
        self._inference_channel = aio_channel(
            inference_target, inference_tls, service_config=retry_service_config([INFERENCE_SERVICE])
        )
        self.gateway = Gateway(GrpcCache(self._cache_channel), GrpcInference(self._inference_channel), config)

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(self.gateway), server)

    async def start(self) -> None:
        await self.gateway.start()

    async def close(self) -> None:
        await self.gateway.close()
        await self._cache_channel.close()
        await self._inference_channel.close()


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser("REPRISE_GATEWAY_", prog="python -m gateway", description="Reprise gateway (gRPC, public API).")
    add_server_options(parser, default_port=50050, default_metrics_port=9100)
    parser.add_option("--cache-target", default="127.0.0.1:50052", help="cache service address host:port")
    parser.add_option("--inference-target", default="127.0.0.1:50051", help="inference service address host:port")
    parser.add_option("--cache-timeout-ms", default=30.0, type=float, help="budget for a cache lookup; past it, a miss")
    parser.add_option("--max-text-chars", default=8000, type=int, help="longest text accepted")
    add_client_tls_options(parser, "cache")
    add_client_tls_options(parser, "inference")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging("gateway", args.log_level, args.log_format)
    options = server_options(args)

    async def serve() -> None:
        # grpc.aio channels bind to the running loop: build them inside it.
        app = GatewayApp(
            args.cache_target,
            args.inference_target,
            GatewayConfig(cache_timeout_s=args.cache_timeout_ms / 1000, max_text_chars=args.max_text_chars),
            cache_tls=client_tls(args, "cache"),
            inference_tls=client_tls(args, "inference"),
        )
        await run_until_signal(app, options)

    asyncio.run(serve())
