"""Composition root of the inference service: config, placement, engine, worker, servicer, host."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import grpc

from inference_svc import metrics, options
from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.scheduling import Rates
from inference_svc.core.service import Batching, InferenceService, Limits
from inference_svc.core.worker import ModelWorker
from inference_svc.runtime import placement
from inference_svc.runtime.model_source import ModelSourceError
from inference_svc.servicer import InferenceServicer
from reprise import tracing
from reprise.inference.v1 import inference_pb2, inference_pb2_grpc
from reprise.rpc.config import EnvArgumentParser, add_server_options, server_options
from reprise.rpc.logs import configure_logging
from reprise.rpc.server import run_until_signal

log = logging.getLogger(__name__)

#: See main(): how long the event loop may keep the GIL from the model thread.
SWITCH_INTERVAL_S = 0.0005

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


class InferenceApp:
    """The inference service as the server host sees it."""

    name = "inference"
    service_names = (SERVICE_NAME,)

    def __init__(
        self,
        engine_config: EngineConfig,
        max_queue: int = 64,
        limits: Limits = Limits(),
        batching: Batching = Batching(),
        max_active_streams: int = 16,
        rates: Rates | None = None,
        prefill_slice: int = 32,
    ) -> None:
        observer = metrics.PrometheusObserver()
        self.engine = Engine(engine_config, observer)
        self.worker = ModelWorker(max_queue, max_active_streams, rates=rates, observer=observer)
        self.service = InferenceService(self.engine, self.worker, limits, batching, prefill_slice)

    def register(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(self.service), server)

    async def start(self) -> None:
        await self.service.start()

    async def close(self) -> None:
        await self.service.close()


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        "REPRISE_INFERENCE_", prog="python -m inference_svc", description="Reprise inference service (gRPC)."
    )
    add_server_options(parser, default_port=50051, default_metrics_port=9101)
    options.add_model_options(parser)
    parser.add_option("--max-new-tokens", default=128, type=int, help="default reply length limit")
    parser.add_option("--max-context-tokens", default=4096, type=int, help="prompt + reply token limit")
    parser.add_option("--max-queue", default=64, type=int, help="jobs waiting for the model before RESOURCE_EXHAUSTED")
    parser.add_option(
        "--max-active-streams", default=16, type=int,
        help="chat replies decoded together (one forward pass per token for all of them: continuous batching)",
    )
    parser.add_option("--kv-cache-mb", default=512, type=int, help="memory budget of the conversation KV index (LRU)")
    parser.add_option("--max-batch", default=16, type=int, help="classify requests per forward pass")
    parser.add_option("--batch-wait-ms", default=3.0, type=float, help="longest wait for a fuller classify batch")
    parser.add_option("--prefill-chunk", default=512, type=int, help="prompt tokens per prefill pass")
    parser.add_option(
        "--prefill-slice", default=32, type=int,
        help="prompt tokens per prefill pass while other requests wait for the model (they wait for the pass in progress): long prompts (chat, classify texts over 128 tokens) are prefilled in slices between other work",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("inference", args.log_level, args.log_format)
    # The model thread gives up the GIL in every torch call and must win it back from the event loop,
    # which Python forces only after the switch interval (default 5 ms). With the loop kept busy by
    # 50 clients refused at admission, the default model decoded at ~2 tokens/s instead of ~50 and
    # none of 16 admitted chats finished within 20 s; at 0.5 ms, 51 of 51 did (make bench-sched).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    tracing.setup("inference", os.environ)  # off unless OTEL_* variables say otherwise
    try:
        where = placement.apply(args.cpus)  # before any torch work, so its thread pools see the mask
    except ValueError as exc:
        parser.error(str(exc))
    log.info("placement: %s", where.describe())
    app = InferenceApp(
        options.engine_config(
            args,
            max_new_tokens=args.max_new_tokens,
            max_context_tokens=args.max_context_tokens,
            kv_cache_bytes=args.kv_cache_mb * 1024 * 1024,
            prefill_chunk=args.prefill_chunk,
        ),
        max_queue=args.max_queue,
        batching=Batching(max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms),
        max_active_streams=args.max_active_streams,
        prefill_slice=args.prefill_slice,
    )
    try:
        asyncio.run(run_until_signal(app, server_options(args, internal=True)))
    except (ValueError, ModelSourceError) as exc:  # flags that cannot serve together, or no model to load
        log.error("cannot start: %s", exc)
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
