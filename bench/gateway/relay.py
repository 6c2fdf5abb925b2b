"""The naive baseline the issue measures against: a plain grpc.aio relay, client -> relay -> cache.

It answers Gateway.Classify by forwarding one Cache.Lookup and copying the
entry's label back: no policy, no breaker, no metrics, no hot layer. Whatever
the real gateway costs above this is the price of its features; whatever it
saves below it is the hot-key layer.

    python -m bench.gateway.relay --port 0 --cache-target 127.0.0.1:50052 --model-id X --model-revision Y
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import grpc

from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class Relay(pb_grpc.GatewayServicer):
    def __init__(self, cache: cache_pb2_grpc.CacheStub, model_id: str, revision: str) -> None:
        self._cache = cache
        self._model = (model_id, revision)

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        query = cache_pb2.CacheQuery(
            namespace="public", model_id=self._model[0], model_revision=self._model[1], task="sentiment", text=request.text
        )
        r = await self._cache.Lookup(cache_pb2.LookupRequest(query=query, exact_only=True), timeout=1.0)
        status = pb.CACHE_STATUS_EXACT if r.tier == cache_pb2.TIER_EXACT else pb.CACHE_STATUS_MISS
        return pb.ClassifyResponse(result=r.entry.answer.sentiment, cache=pb.CacheInfo(status=status))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gateway.relay")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cache-target", required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--model-revision", required=True)
    a = p.parse_args(argv)

    async def serve() -> None:
        # Deliberately bare: no interceptor, no metrics, no request ids (health only, for readiness).
        channel = grpc.aio.insecure_channel(a.cache_target)
        server = grpc.aio.server()
        pb_grpc.add_GatewayServicer_to_server(Relay(cache_pb2_grpc.CacheStub(channel), a.model_id, a.model_revision), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        server.add_insecure_port(f"127.0.0.1:{a.port}")
        await server.start()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        await server.wait_for_termination()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
