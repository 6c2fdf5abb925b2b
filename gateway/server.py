"""Composition root of the gateway: config, channels to cache and inference, flow, servicer, host."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence

import grpc

from gateway import metrics
from gateway.auth import MIN_TOKEN_CHARS, Authenticator, TokenFile, TokenTable
from gateway.clients import GrpcCache, GrpcInference
from gateway.core.breaker import BreakerConfig
from gateway.core.flow import Gateway, GatewayConfig
from gateway.core.hot import HotConfig
from gateway.core.limits import Limits
from gateway.core.policy import TaskDefaults, default_task_defaults
from gateway.core.types import TASK_CHAT, TASKS
from gateway.replicas import RoutedInference, RoutingConfig
from gateway.servicer import GatewayServicer
from reprise import tracing
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

def backend_channel(target: str, tls: ClientTLS | None, service_config: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel to a service behind the gateway (TLS when ``tls`` is given)."""
    return aio_channel(target, tls, service_config=service_config)


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
        tokens: TokenTable | None = None,
        token_file: TokenFile | None = None,
        tokens_reload_s: float = 10.0,
        operator_tokens: Sequence[str] = (),
        metrics_tenant_labels: int = metrics.DEFAULT_MAX_TENANT_LABELS,
        routing: RoutingConfig | None = RoutingConfig(),
    ) -> None:
        self._cache_channel = backend_channel(cache_target, cache_tls)
        self._inference_channel: grpc.aio.Channel | None = None
        self.routed: RoutedInference | None = None
        inference: GrpcInference | RoutedInference
        if routing is not None:
            # A channel per replica; each retries UNAVAILABLE inside gRPC (before any reply byte
            # reached us: safe), then the router tries the next replica.
            self.routed = inference = RoutedInference(
                inference_target,
                inference_tls,
                lambda address, tls: backend_channel(address, tls, retry_service_config([INFERENCE_SERVICE], max_attempts=2)),
                routing,
                on_pick=metrics.inference_route,
            )
        else:
            # One channel balancing round-robin over every address the target resolves to.
            self._inference_channel = backend_channel(
                inference_target, inference_tls, retry_service_config([INFERENCE_SERVICE])
            )
            inference = GrpcInference(self._inference_channel)
        self.gateway = Gateway(
            GrpcCache(self._cache_channel),
            inference,
            config,
            metrics.PrometheusObserver(),
        )
        metrics.track(self.gateway, metrics_tenant_labels)
        self.auth = Authenticator(tokens, required=token_file is not None, operator_tokens=operator_tokens)
        self._token_file = token_file
        self._tokens_reload_s = tokens_reload_s
        self._token_watch: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(self.gateway, self.auth), server)

    async def start(self) -> None:
        if self.routed is not None:
            await self.routed.start()
        await self.gateway.start()
        if self._token_file is not None and self._tokens_reload_s > 0:
            self._token_watch = asyncio.create_task(self._watch_tokens(self._token_file), name="tokens-file")

    async def _watch_tokens(self, source: TokenFile) -> None:
        """Rotate tokens without a restart; a broken file keeps the tokens in force."""
        while True:
            await asyncio.sleep(self._tokens_reload_s)
            try:
                table = source.reload_if_changed()
            except (OSError, ValueError) as exc:
                log.error("tokens file %s not reloaded, keeping the tokens in force: %s", source.path, exc)
                continue
            if table is not None:
                self.auth.replace(table)
                log.info("tokens file %s reloaded: %d tokens, %d tenants", source.path, len(table), len(table.tenants))

    async def close(self) -> None:
        if self._token_watch is not None:
            self._token_watch.cancel()
        await self.gateway.close()
        await self._cache_channel.close()
        if self._inference_channel is not None:
            await self._inference_channel.close()
        if self.routed is not None:
            await self.routed.close()


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _optional_float(raw: str) -> float | None:
    return None if raw.strip().lower() in ("", "none", "default") else float(raw)


def _optional_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("", "none", "default") else int(raw)


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser("REPRISE_GATEWAY_", prog="python -m gateway", description="Reprise gateway (gRPC, public API).")
    add_server_options(p, default_port=50050, default_metrics_port=9100)
    p.add_option("--cache-target", default="127.0.0.1:50052", help="cache service address host:port")
    p.add_option(
        "--inference-target", default="127.0.0.1:50051",
        help="inference address: host:port, dns:///host:port (every address it resolves to is a replica) or host:port,host:port",
    )
    rc = RoutingConfig()
    p.add_option(
        "--inference-routing", default="prefix", choices=("prefix", "round-robin"),
        help="prefix: a conversation's turns go to the replica holding its prefix (bounded load), classify to the least loaded; round-robin: every call to the next replica",
    )
    p.add_option("--inference-load-factor", default=rc.load_factor, type=float, help="prefix routing: a replica carrying more than this times its share of calls in flight is passed over")
    p.add_option("--inference-resolve-interval", default=rc.resolve_s, type=float, help="prefix routing: seconds between DNS resolutions of the inference target (0: once)")
    p.add_option("--cache-timeout-ms", default=30.0, type=float, help="budget for a cache lookup; past it, a miss")
    p.add_option(
        "--cache-timeout-miss-share", default=0.25, type=float,
        help="a lookup may also take this share of what its task's misses cost lately (the model's answer time), up to --cache-timeout-max-ms (0: budgets fixed)",
    )
    p.add_option("--cache-timeout-max-ms", default=1000.0, type=float, help="longest lookup budget the miss share can give, and the budget before a task's first miss is answered")
    p.add_option("--store-timeout-ms", default=2000.0, type=float, help="budget for a background write-back")
    # Limits.
    lim = Limits()
    p.add_option("--max-in-flight", default=512, type=int, help="requests in flight before RESOURCE_EXHAUSTED (0: none)")
    p.add_option("--max-model-in-flight", default=32, type=int, help="model calls in flight before RESOURCE_EXHAUSTED (0: none)")
    p.add_option("--max-concurrent-rpcs", default=0, type=int, help="gRPC-level hard cap on concurrent RPCs (0: none)")
    p.add_option("--max-request-bytes", default=lim.max_request_bytes, type=int, help="largest request accepted")
    p.add_option("--max-text-chars", default=lim.max_text_chars, type=int, help="longest text (and history turn)")
    p.add_option("--max-system-prompt-chars", default=lim.max_system_prompt_chars, type=int, help="longest system prompt")
    p.add_option("--max-history-turns", default=lim.max_history_turns, type=int, help="most history turns")
    p.add_option("--max-total-chars", default=lim.max_total_chars, type=int, help="text + system prompt + history")
    p.add_option("--max-new-tokens", default=lim.max_new_tokens, type=int, help="largest decoding.max_new_tokens")
    p.add_option("--max-ttl", default=lim.max_ttl_s, type=int, help="largest cache.ttl_seconds a caller may ask for")
    # Breaker and hot layer.
    br = BreakerConfig()
    p.add_option("--breaker-failures", default=br.failure_threshold, type=int, help="cache failures in a row that open the breaker")
    p.add_option("--breaker-open-ms", default=br.open_s * 1000, type=float, help="first open period before a probe")
    p.add_option("--breaker-max-open-ms", default=br.max_open_s * 1000, type=float, help="longest open period (doubles per failed probe)")
    hot = HotConfig()
    p.add_option("--hot-entries", default=hot.max_entries, type=int, help="hot-key layer size (0: off)")
    p.add_option("--hot-max-age", default=hot.max_age_s, type=float, help="seconds a hot entry is served before the cache is asked again (served on if that lookup fails)")
    p.add_option("--replay-chunk-chars", default=16, type=int, help="characters per message when replaying a cached stream")
    p.add_option("--model-refresh", default=30.0, type=float, help="seconds between model identity checks")
    p.add_option(
        "--metrics-tenant-labels", default=metrics.DEFAULT_MAX_TENANT_LABELS, type=int,
        help="tenants named in per-tenant metrics (first seen); the rest are summed as _other (0: none named)",
    )
    # Tenancy.
    p.add_option("--tokens-file", help="file of 'token tenant' lines; enables bearer-token auth; re-read when it changes")
    p.add_option("--tokens-reload", default=10.0, type=float, help="seconds between checks of --tokens-file for changes (0: read once)")
    # "%(default).0s" keeps argparse from printing the tokens in --help.
    p.add_option("--tokens", default="", help="token=tenant[,token=tenant...]; enables bearer-token auth%(default).0s")
    p.add_option(
        "--operator-tokens", default="",
        help="token[,token...] whose Stats show the replica's totals over all tenants (tenants see only their own)%(default).0s",
    )
    # Per-task cache defaults.
    for task in TASKS:
        d = default_task_defaults()[task]
        p.add_option(f"--{task}-exact-only", default=d.exact_only, type=_bool, help=f"{task}: exact hits only unless the request says")
        p.add_option(f"--{task}-min-similarity", default=None, type=_optional_float, help=f"{task}: semantic threshold (unset: the cache's)")
        p.add_option(f"--{task}-ttl", default=None, type=_optional_int, help=f"{task}: entry lifetime in s (unset: the cache's)")
        p.add_option(f"--{task}-max-age", default=None, type=_optional_int, help=f"{task}: oldest entry served in s (unset: any)")
        p.add_option(
            f"--{task}-cache-timeout-ms", default=None if d.cache_timeout_s is None else d.cache_timeout_s * 1000,
            type=_optional_float, help=f"{task}: budget for a cache lookup (unset: --cache-timeout-ms)",
        )
    p.add_option(f"--{TASK_CHAT}-cache-sampled", default=False, type=_bool, help="chat: cache sampled (temperature > 0, no seed) replies")
    for peer in ("cache", "inference"):
        add_client_tls_options(p, peer)
        p.add_option(f"--{peer}-tls-server-name", help=f"name to verify in the {peer} certificate (default: the target host)")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The gateway configuration the flags describe (validated here, at startup)."""
    defaults = {
        task: TaskDefaults(
            exact_only=getattr(args, f"{task}_exact_only"),
            min_similarity=getattr(args, f"{task}_min_similarity"),
            ttl_s=getattr(args, f"{task}_ttl"),
            max_age_s=getattr(args, f"{task}_max_age"),
            cache_sampled=getattr(args, f"{task}_cache_sampled", False),
            cache_timeout_s=None if (ms := getattr(args, f"{task}_cache_timeout_ms")) is None else ms / 1000,
        )
        for task in TASKS
    }
    if not 0.0 <= args.cache_timeout_miss_share <= 1.0:
        raise SystemExit("--cache-timeout-miss-share must be in [0, 1]")
    if args.cache_timeout_max_ms < 0:
        raise SystemExit("--cache-timeout-max-ms must not be negative")
    for task, d in defaults.items():
        if d.min_similarity is not None and not 0.0 <= d.min_similarity <= 1.0:
            raise SystemExit(f"--{task}-min-similarity must be in [0, 1]")
    return GatewayConfig(
        cache_timeout_s=args.cache_timeout_ms / 1000,
        cache_timeout_miss_share=args.cache_timeout_miss_share,
        cache_timeout_max_s=args.cache_timeout_max_ms / 1000,
        store_timeout_s=args.store_timeout_ms / 1000,
        replay_chunk_chars=max(1, args.replay_chunk_chars),
        max_in_flight=args.max_in_flight,
        max_model_in_flight=args.max_model_in_flight,
        model_refresh_s=args.model_refresh,
        limits=Limits(
            max_text_chars=args.max_text_chars,
            max_system_prompt_chars=args.max_system_prompt_chars,
            max_history_turns=args.max_history_turns,
            max_total_chars=args.max_total_chars,
            max_new_tokens=args.max_new_tokens,
            max_ttl_s=args.max_ttl,
            max_request_bytes=args.max_request_bytes,
        ),
        breaker=BreakerConfig(
            failure_threshold=args.breaker_failures,
            open_s=args.breaker_open_ms / 1000,
            max_open_s=args.breaker_max_open_ms / 1000,
        ),
        hot=HotConfig(max_entries=args.hot_entries, max_age_s=args.hot_max_age),
        task_defaults=defaults,
    )


def _peer_tls(args: argparse.Namespace, peer: str) -> ClientTLS | None:
    tls = client_tls(args, peer)
    name = getattr(args, f"{peer}_tls_server_name")
    return dataclasses.replace(tls, server_name=name) if tls is not None and name else tls


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging("gateway", args.log_level, args.log_format)
    tracing.setup("gateway", os.environ)  # off unless OTEL_* variables say otherwise
    config = config_from_args(args)
    token_file = TokenFile(args.tokens_file, args.tokens) if args.tokens_file else None
    try:
        tokens = token_file.load() if token_file else TokenTable.load([], args.tokens)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"tokens: {exc}") from None
    operators = [t.strip() for t in args.operator_tokens.split(",") if t.strip()]
    if any(len(t) < MIN_TOKEN_CHARS for t in operators):
        raise SystemExit(f"--operator-tokens: each token needs at least {MIN_TOKEN_CHARS} characters")
    log.info("auth %s (%d tenants)", "on" if len(tokens) else "off: every call is tenant 'public'", len(tokens.tenants))
    options = server_options(args, max_concurrent_rpcs=args.max_concurrent_rpcs or None)
    if args.inference_load_factor < 1.0:
        raise SystemExit("--inference-load-factor must be at least 1")
    routing = (
        RoutingConfig(load_factor=args.inference_load_factor, resolve_s=args.inference_resolve_interval)
        if args.inference_routing == "prefix"
        else None
    )

    async def serve() -> None:
        # grpc.aio channels bind to the running loop: build them inside it.
        app = GatewayApp(
            args.cache_target,
            args.inference_target,
            config,
            cache_tls=_peer_tls(args, "cache"),
            inference_tls=_peer_tls(args, "inference"),
            tokens=tokens,
            token_file=token_file,
            operator_tokens=operators,
            tokens_reload_s=args.tokens_reload,
            metrics_tenant_labels=args.metrics_tenant_labels,
            routing=routing,
        )
        await run_until_signal(app, options)

    asyncio.run(serve())
