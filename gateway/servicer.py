"""gRPC adapter of the gateway, the public API: auth and size at the edge, then the flow."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from gateway import wire
from gateway.auth import Authenticator
from gateway.core.flow import Gateway
from gateway.core.types import Prompt
from reprise import convert
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.rpc.tenant import tenant as calling_tenant


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway, auth: Authenticator | None = None) -> None:
        self._gw = gateway
        self._auth = auth or Authenticator()

    def _tenant(self, request: object, context: grpc.aio.ServicerContext) -> str:
        """Who is calling (UNAUTHENTICATED if unknown), then whether the request is too big."""
        tenant = self._auth.tenant(context.invocation_metadata())
        # Pictures have caps of their own (reprise.images); the size cap is for everything else.
        pictures = sum(len(image) for image in getattr(request, "images", ()))
        self._gw.validate.request_size(request.ByteSize() - pictures)  # type: ignore[attr-defined]
        calling_tenant.set(tenant)  # the inference client passes it on (the service queues tenants fairly)
        return tenant

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        tenant = self._tenant(request, context)
        out = await self._gw.classify(tenant, request.text, wire.policy_from_pb(request.cache), context.time_remaining())
        return wire.classify_response(out)

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        tenant = self._tenant(request, context)
        out = await self._gw.chat(tenant, wire.prompt_from_pb(request), wire.policy_from_pb(request.cache), context.time_remaining())
        return wire.chat_response(out)

    async def ChatStream(
        self, request: pb.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatStreamResponse]:
        tenant = self._tenant(request, context)
        prompt, policy = wire.prompt_from_pb(request), wire.policy_from_pb(request.cache)
        stream = self._gw.chat_stream(tenant, prompt, policy, context.time_remaining())
        # aclosing: a caller that goes away releases the flow's slot now, not at garbage collection.
        async with contextlib.aclosing(stream) as deltas:
            async for delta in deltas:
                yield wire.chat_stream_response(delta)

    async def Analyze(self, request: pb.AnalyzeRequest, context: grpc.aio.ServicerContext) -> pb.AnalyzeResponse:
        tenant = self._tenant(request, context)
        prompt = Prompt(request.text, decoding=convert.decoding_from_pb(request.decoding))
        out = await self._gw.analyze(
            tenant, prompt, wire.policy_from_pb(request.cache), tuple(request.tasks), context.time_remaining()
        )
        return wire.analyze_response(out)

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        # An operator token sees the replica's totals (tenant "*"); anyone else only their own tenant.
        if self._auth.is_operator(context.invocation_metadata()):
            return wire.stats_response(await self._gw.stats(None))
        tenant = self._tenant(request, context)
        return wire.stats_response(await self._gw.stats(tenant))
