"""Composition root of the inference service: config, engine, worker, servicer, host."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import grpc
import torch

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.service import InferenceService, Limits
from inference_svc.core.worker import ModelWorker
from inference_svc.servicer import InferenceServicer
from reprise.inference.v1 import inference_pb2, inference_pb2_grpc
from reprise.rpc.config import EnvArgumentParser, add_server_options, server_options
from reprise.rpc.logs import configure_logging
from reprise.rpc.server import run_until_signal

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


class InferenceApp:
    """The inference service as the server host sees it."""

    name = "inference"
    service_names = (SERVICE_NAME,)

    def __init__(self, engine_config: EngineConfig, max_queue: int = 64, limits: Limits = Limits()) -> None:
        self.service = InferenceService(Engine(engine_config), ModelWorker(max_queue), limits)

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
    parser.add_option(
        "--model",
        default="default",
        help="'default' (packaged Qwen2.5-Coder-0.5B-Instruct GGUF), a model directory, a .gguf file, or a hub id",
    )
    parser.add_option("--model-cache", default=".models", type=Path, help="where the assembled and converted models live")
    parser.add_option("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="compute dtype")
    parser.add_option("--max-new-tokens", default=128, type=int, help="default reply length limit")
    parser.add_option("--max-context-tokens", default=4096, type=int, help="prompt + reply token limit")
    parser.add_option("--max-queue", default=64, type=int, help="requests waiting for the model before RESOURCE_EXHAUSTED")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging("inference", args.log_level, args.log_format)
    threads = len(os.sched_getaffinity(0))
    # Size torch to the CPUs we may run on (never os.cpu_count()); before any torch work.
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    log.info("cpus %s, torch threads %d", sorted(os.sched_getaffinity(0)), threads)
    app = InferenceApp(
        EngineConfig(
            model=args.model,
            cache_dir=args.model_cache,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            max_context_tokens=args.max_context_tokens,
        ),
        max_queue=args.max_queue,
    )
    asyncio.run(run_until_signal(app, server_options(args)))
