"""gRPC adapter of the inference service: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from inference_svc import spans
from inference_svc.core.engine import ChatChunk
from inference_svc.core.request import ChatRequest
from inference_svc.core.scheduling import DEFAULT_TENANT
from inference_svc.core.service import InferenceService
from reprise import convert
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc
from reprise.rpc import tenant


def _tenant(context: grpc.aio.ServicerContext) -> str:
    return tenant.from_metadata(context.invocation_metadata(), DEFAULT_TENANT)


def _timings(queue_ms: float, chunk: ChatChunk) -> pb.InferenceTimings:
    return pb.InferenceTimings(queue_ms=queue_ms, prefill_ms=chunk.prefill_ms, decode_ms=chunk.decode_ms)


class InferenceServicer(pb_grpc.InferenceServicer):
    """Thin adapter: each RPC converts, calls :class:`InferenceService`, converts back."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        start_ns = time.time_ns()
        out = await self._service.classify(request.text, _tenant(context), context.time_remaining())
        spans.classify_spans(start_ns, out.queue_ms, out.compute_ms, out.batch_size, out.usage)
        return pb.ClassifyResponse(
            result=convert.sentiment_to_pb(out.result),
            usage=convert.usage_to_pb(out.usage),
            timings=pb.InferenceTimings(queue_ms=out.queue_ms, prefill_ms=out.compute_ms),
            batch_size=out.batch_size,
        )

    def _chat(
        self, request: pb.ChatRequest | pb.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tuple[ChatChunk, float]]:
        chat = convert.chat_from_pb(request, ChatRequest)  # the one value the service and the engine take
        return self._service.chat_stream(chat, _tenant(context), context.time_remaining())

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        parts: list[str] = []
        start_ns = time.time_ns()
        async for chunk, queue_ms in self._chat(request, context):
            parts.append(chunk.delta)
        spans.chat_spans(start_ns, queue_ms, chunk)
        return pb.ChatResponse(
            reply="".join(parts),
            finish_reason=convert.finish_to_pb(chunk.finish),
            usage=convert.usage_to_pb(chunk.usage),
            timings=_timings(queue_ms, chunk),
        )

    async def ChatStream(
        self, request: pb.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatStreamResponse]:
        start_ns = time.time_ns()
        async for chunk, queue_ms in self._chat(request, context):
            if chunk.finish is None:
                yield pb.ChatStreamResponse(delta=chunk.delta)
            else:
                spans.chat_spans(start_ns, queue_ms, chunk)
                yield pb.ChatStreamResponse(
                    delta=chunk.delta,
                    finish_reason=convert.finish_to_pb(chunk.finish),
                    usage=convert.usage_to_pb(chunk.usage),
                    timings=_timings(queue_ms, chunk),
                )

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfoResponse:
        d = await self._service.describe()
        return pb.ModelInfoResponse(
            model_id=d.model_id,
            revision=d.revision,
            dtype=d.dtype,
            cpus=list(d.cpus),
            threads=d.threads,
            interop_threads=d.interop_threads,
            max_context_tokens=d.max_context_tokens,
            architecture=d.architecture,
            weights=d.weights,
            load_seconds=d.load_seconds,
            decode_bytes_per_token=d.decode_bytes,
            kv_cache_bytes=d.kv.bytes,
            kv_cache_budget_bytes=d.kv.budget_bytes,
            kv_cache_entries=d.kv.entries,
            memory_nodes=d.memory_nodes,
            prompts_revision=d.prompts_revision,
            int4_kernel=d.int4_kernel,
            decode_ops=d.decode_ops,
            takes_images=self._service.takes_images,
        )
