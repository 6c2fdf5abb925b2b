"""Composition root of the cache service: config, Redis client, service, servicer, host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
import redis.asyncio as aioredis

from cache_svc.core.service import CacheConfig, CacheService
from cache_svc.core.store import RedisStore
from cache_svc.servicer import CacheServicer
from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from reprise.errors import Unavailable
from reprise.rpc.config import EnvArgumentParser, add_server_options, server_options
from reprise.rpc.logs import configure_logging
from reprise.rpc.server import run_until_signal

log = logging.getLogger(__name__)

SERVICE_NAME = cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name


class CacheApp:
    name = "cache"
    service_names = (SERVICE_NAME,)

    def __init__(self, redis_url: str, config: CacheConfig = CacheConfig(), key_prefix: str = "reprise") -> None:
        self._redis = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.service = CacheService(RedisStore(self._redis, key_prefix), config)

    def register(self, server: grpc.aio.Server) -> None:
        cache_pb2_grpc.add_CacheServicer_to_server(CacheServicer(self.service), server)

    async def start(self) -> None:
        # Wait for Redis instead of failing: a sidecar may start before its Redis.
        delay = 0.1
        while True:
            try:
                await self.service.start()
                return
            except Unavailable as exc:
                log.warning("waiting for redis: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        await self.service.close()
        await self._redis.aclose()


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser("REPRISE_CACHE_", prog="python -m cache_svc", description="Reprise cache service (gRPC).")
    add_server_options(parser, default_port=50052, default_metrics_port=9102)
    parser.add_option("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis URL (redis://, rediss:// for TLS)")
    parser.add_option("--key-prefix", default="reprise", help="prefix of every Redis key this service writes")
    parser.add_option("--default-ttl", default=24 * 3600, type=int, help="entry lifetime in seconds when Store sets none")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging("cache", args.log_level, args.log_format)
    app = CacheApp(args.redis_url, CacheConfig(default_ttl_s=args.default_ttl), args.key_prefix)
    asyncio.run(run_until_signal(app, server_options(args)))
