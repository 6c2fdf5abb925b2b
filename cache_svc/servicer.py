"""gRPC adapter of the cache service: protobuf <-> domain at the edge, nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cache_svc import spans
from reprise.images import check_images, image_digest
from cache_svc.core.service import CacheService
from cache_svc.core.types import CacheQuery, Entry, Invalidation, InvalidationKind, LookupOptions
from reprise import convert
from reprise.cache.v1 import cache_pb2 as pb
from reprise.cache.v1 import cache_pb2_grpc as pb_grpc
from reprise.errors import InvalidArgument

_TIER_TO_PB = {"miss": pb.TIER_MISS, "exact": pb.TIER_EXACT, "semantic": pb.TIER_SEMANTIC}


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


async def image_digests(images: Sequence[bytes], field: str = "query.images") -> tuple[str, ...]:
    """Digests of a query's images, decoded off the event loop after the cheap checks.

    A Lookup with a large image must not stall the other calls of this replica
    (Stats, health, every other Lookup) while its pixels are decoded.
    """
    if not images:
        return ()
    check_images(images, field)
    return await asyncio.to_thread(lambda: tuple(image_digest(img, f"{field}[{i}]") for i, img in enumerate(images)))


async def query_from_pb(q: pb.CacheQuery) -> CacheQuery:
    return CacheQuery(
        namespace=q.namespace,
        task=q.task,
        text=q.text,
        model_id=q.model_id,
        model_revision=q.model_revision,
        system_prompt=q.system_prompt,
        history=convert.turns_from_pb(q.history, "query.history"),
        decoding=convert.decoding_from_pb(q.decoding),
        image_digests=await image_digests(q.images),
    )


def entry_to_pb(e: Entry) -> pb.CacheEntry:
    return pb.CacheEntry(
        key=e.key,
        namespace=e.namespace,
        task=e.task,
        text=e.text,
        answer=convert.answer_to_pb(e.answer),
        created_at=_ts(e.created_at),
        expires_at=_ts(e.expires_at),
        model_id=e.model_id,
        model_revision=e.model_revision,
    )


def invalidation_from_pb(request: pb.InvalidateRequest) -> Invalidation:
    target = request.WhichOneof("target")
    if target == "key":
        return Invalidation(InvalidationKind.KEY, request.key)
    if target == "namespace":
        return Invalidation(InvalidationKind.NAMESPACE, request.namespace)
    if target == "model":
        m = request.model
        return Invalidation(InvalidationKind.MODEL, m.model_id, m.model_revision if m.HasField("model_revision") else None)
    raise InvalidArgument("target", "set one of key, namespace or model")


def invalidation_to_pb(inv: Invalidation) -> pb.WatchInvalidationsResponse:
    if inv.kind is InvalidationKind.KEY:
        return pb.WatchInvalidationsResponse(key=inv.value)
    if inv.kind is InvalidationKind.NAMESPACE:
        return pb.WatchInvalidationsResponse(namespace=inv.value)
    model = pb.ModelRef(model_id=inv.value)
    if inv.model_revision is not None:
        model.model_revision = inv.model_revision
    return pb.WatchInvalidationsResponse(model=model)


class CacheServicer(pb_grpc.CacheServicer):
    def __init__(self, service: Callable[[], CacheService]) -> None:
        # A getter: the service is built in the app's start(), after the server is bound.
        self._service = service

    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        if request.HasField("min_similarity") and not 0.0 <= request.min_similarity <= 1.0:
            raise InvalidArgument("min_similarity", "must be a cosine similarity in [0, 1]")
        options = LookupOptions(
            exact_only=request.exact_only,
            min_similarity=request.min_similarity if request.HasField("min_similarity") else None,
            max_age_s=request.max_age_seconds if request.HasField("max_age_seconds") else None,
        )
        start_ns = time.time_ns()
        result = await self._service().lookup(await query_from_pb(request.query), options)
        spans.lookup_spans(start_ns, request.query.namespace, result)
        response = pb.LookupResponse(
            tier=_TIER_TO_PB[result.tier.value],
            key=result.key,
            similarity=result.similarity,
            rejected_reason=result.rejected_reason,
            stage_ms=result.stage_ms,
        )
        if result.entry is not None:
            response.entry.CopyFrom(entry_to_pb(result.entry))
        return response

    async def Store(self, request: pb.StoreRequest, context: grpc.aio.ServicerContext) -> pb.StoreResponse:
        entry = await self._service().store(
            await query_from_pb(request.query),
            convert.answer_from_pb(request.answer),
            request.ttl_seconds if request.HasField("ttl_seconds") else None,
            request.exact_only,
        )
        return pb.StoreResponse(key=entry.key, expires_at=_ts(entry.expires_at), semantic_indexed=entry.semantic)

    async def Invalidate(self, request: pb.InvalidateRequest, context: grpc.aio.ServicerContext) -> pb.InvalidateResponse:
        removed = await self._service().invalidate(invalidation_from_pb(request))
        return pb.InvalidateResponse(removed=removed)

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        s = await self._service().stats(request.namespace)
        return pb.StatsResponse(
            entries=s.entries,
            entries_by_namespace=s.entries_by_namespace,
            counters=pb.TierCounters(
                exact_hits=s.exact_hits, semantic_hits=s.semantic_hits, misses=s.misses, guard_rejections=s.guard_rejections
            ),
            indexed_vectors=s.indexed_vectors,
            local_entries=s.local_entries,
            redis_used_memory_bytes=s.redis_used_memory_bytes,
            index_memory_bytes=s.index_memory_bytes,
            embedder=s.embedder,
        )

    async def WatchInvalidations(
        self, request: pb.WatchInvalidationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchInvalidationsResponse]:
        watcher = self._service().watch()
        try:
            # Initial metadata tells the client the stream is registered: every
            # invalidation from here on reaches it.
            await context.send_initial_metadata((("x-reprise-watching", "1"),))
            async for inv in watcher:
                yield invalidation_to_pb(inv)
        finally:
            watcher.close()
