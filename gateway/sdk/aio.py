"""The asyncio client (one per event loop: grpc.aio channels belong to the loop that made them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from gateway import wire
from gateway.core.types import AnalyzeOutcome, ChatDelta, ChatOutcome, ClassifyOutcome, GatewayStats, Policy
from gateway.sdk import base
from gateway.sdk.base import ClientOptions
from reprise.domain import Decoding, Turn
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc


class AsyncClient:
    """asyncio client of the gateway. ``await client.close()`` (or ``async with``) when done."""

    def __init__(self, options: ClientOptions | str = ClientOptions()) -> None:
        self.options = ClientOptions(options) if isinstance(options, str) else options
        o = self.options
        if o.tls is None:
            self._channel = grpc.aio.insecure_channel(o.target, options=o.channel_args())
        else:
            self._channel = grpc.aio.secure_channel(o.target, o.tls.credentials(), options=o.channel_args())
        self._stub = pb_grpc.GatewayStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request, timeout_s: float | None, request_id: str | None):  # type: ignore[no-untyped-def]
        try:
            return await method(
                request, timeout=timeout_s or self.options.timeout_s, metadata=self.options.metadata(request_id)
            )
        except grpc.aio.AioRpcError as err:
            raise base.to_error(err, self.options.tls is not None) from None

    async def classify(
        self, text: str, *, policy: Policy | None = None, timeout_s: float | None = None, request_id: str | None = None
    ) -> ClassifyOutcome:
        """Sentiment of ``text`` (exact cache hits only by default)."""
        r = await self._call(self._stub.Classify, base.classify_request(text, policy), timeout_s, request_id)
        return wire.classify_outcome(r)

    async def chat(
        self,
        text: str,
        *,
        history: Sequence[Turn] = (),
        system_prompt: str | None = None,
        decoding: Decoding | None = None,
        policy: Policy | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        images: Sequence[bytes] = (),
    ) -> ChatOutcome:
        """One chat turn, answered whole. ``images``: encoded pictures (PNG, JPEG...) shown with ``text``."""
        request = base.chat_request(text, history, system_prompt, decoding, policy, images)
        return wire.chat_outcome(await self._call(self._stub.Chat, request, timeout_s, request_id))

    async def chat_stream(
        self,
        text: str,
        *,
        history: Sequence[Turn] = (),
        system_prompt: str | None = None,
        decoding: Decoding | None = None,
        policy: Policy | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[ChatDelta]:
        """One chat turn, streamed; the first piece carries ``cache``, the last ``finish``/``usage``/``timings``."""
        request = base.chat_stream_request(text, history, system_prompt, decoding, policy, images)
        call = self._stub.ChatStream(
            request, timeout=timeout_s or self.options.timeout_s, metadata=self.options.metadata(request_id)
        )
        try:
            async for r in call:
                yield wire.chat_delta(r)
        except grpc.aio.AioRpcError as err:
            raise base.to_error(err, self.options.tls is not None) from None
        finally:
            call.cancel()

    async def analyze(
        self,
        text: str,
        *,
        decoding: Decoding | None = None,
        policy: Policy | None = None,
        tasks: Sequence[str] = (),
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AnalyzeOutcome:
        """Sentiment and a reply for one text (``tasks`` picks a subset: "sentiment", "chat")."""
        request = base.analyze_request(text, decoding, policy, tasks)
        return wire.analyze_outcome(await self._call(self._stub.Analyze, request, timeout_s, request_id))

    async def stats(self, *, timeout_s: float | None = None) -> GatewayStats:
        """This gateway replica's counters for the caller's tenant."""
        return wire.stats_from_pb(await self._call(self._stub.Stats, pb.StatsRequest(), timeout_s, None))
