"""Composition root of the inference service: config, placement, engine, worker, servicer, host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from inference_svc.core import placement
from inference_svc.core.model_source import ModelSourceError
from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.service import Batching, InferenceService, Limits
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

    def __init__(
        self,
        engine_config: EngineConfig,
        max_queue: int = 64,
        limits: Limits = Limits(),
        batching: Batching = Batching(),
        max_active_streams: int = 4,
    ) -> None:
        self.engine = Engine(engine_config)
        self.worker = ModelWorker(max_queue, max_active_streams)
        self.service = InferenceService(self.engine, self.worker, limits, batching)

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
    parser.add_option("--cpus", default="", help="pin to these CPUs, e.g. 0-3 or 0,2 (empty: the inherited affinity)")
    parser.add_option(
        "--dtype", default="auto", choices=("auto", "bf16", "fp32"),
        help="compute dtype; auto = bf16 where the CPU has AVX512-BF16/AMX and it measures faster, else fp32 activations (int4 weights through Reprise's AVX2 kernel, or fp16 through fbgemm; see --weights)",
    )
    parser.add_option(
        "--weights", default="auto", choices=("auto", "int4", "int8", "fp16", "dense"),
        help="weight format; auto = int4 (group 32) under bf16; when --dtype auto picks fp32, int4 through Reprise's AVX2 kernel where it builds and wins a start-up race against fbgemm's fp16, else fp16 (fbgemm); dense under an explicit --dtype fp32; int8 needs bf16, fp16 needs fp32",
    )
    parser.add_flag("--no-dense-prefill", help="drop the dense copy of int4/int8 weights used for prefill (bf16; fp16 under fp32 with --activations fp32; int8 activations keep none): saves memory, slower prefill")
    parser.add_option(
        "--int4-kernel", default="auto", choices=("auto", "torch"),
        help="int4 decode rows (and 2-31 rows on AMX): auto = Reprise's AVX512-BF16 kernel, compiled with the system C compiler into <model-cache>/native at first start, where it builds, the CPU has AVX512-BF16 and torch's is not over 1.1x faster in a start-up race (else torch's); torch = always torch's. Under fp32, int4 weights always use Reprise's AVX2 kernel (torch here means no int4)",
    )
    parser.add_option(
        "--decode-ops", default="auto", choices=("auto", "torch"),
        help="the small operations of a one-token decode step (norms, RoPE + KV write + attention, SiLU): auto = fused in C (built with the int4 kernel into <model-cache>/native; any x86-64 CPU), torch's where that does not build; torch = always torch's",
    )
    parser.add_option(
        "--activations", default="auto", choices=("auto", "int8", "fp32"),
        help="activations of int4 layers under fp32 (CPUs without bf16): auto = int8, each row quantized per 32 inputs (like llama.cpp's Q8_0) and multiplied in integers by Reprise's AVX2 kernel for every row count, with no fp16 prefill copy; fp32 = fp32 activations (the AVX2 kernel for 1-31 rows, the fp16 copy through fbgemm for more); int8 elsewhere is an error",
    )
    parser.add_flag("--no-tie-embeddings", help="keep a separate input embedding instead of reusing the LM head")
    parser.add_option("--max-new-tokens", default=128, type=int, help="default reply length limit")
    parser.add_option("--max-context-tokens", default=4096, type=int, help="prompt + reply token limit")
    parser.add_option("--max-queue", default=64, type=int, help="jobs waiting for the model before RESOURCE_EXHAUSTED")
    parser.add_option("--max-active-streams", default=4, type=int, help="chat replies decoded concurrently (interleaved)")
    parser.add_option("--kv-cache-mb", default=512, type=int, help="memory budget of the conversation KV index (LRU)")
    parser.add_option("--max-batch", default=16, type=int, help="classify requests per forward pass")
    parser.add_option("--batch-wait-ms", default=3.0, type=float, help="longest wait for a fuller classify batch")
    parser.add_option("--prefill-chunk", default=512, type=int, help="prompt tokens per prefill pass")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("inference", args.log_level, args.log_format)
    try:
        where = placement.apply(args.cpus)  # before any torch work, so its thread pools see the mask
    except ValueError as exc:
        parser.error(str(exc))
    log.info("placement: %s", where.describe())
    app = InferenceApp(
        EngineConfig(
            model=args.model,
            cache_dir=args.model_cache,
            dtype=args.dtype,
            weights=args.weights,
            dense_prefill=not args.no_dense_prefill,
            tie_embeddings=not args.no_tie_embeddings,
            int4_kernel=args.int4_kernel,
            decode_ops=args.decode_ops,
            activations=args.activations,
            max_new_tokens=args.max_new_tokens,
            max_context_tokens=args.max_context_tokens,
            kv_cache_bytes=args.kv_cache_mb * 1024 * 1024,
            prefill_chunk=args.prefill_chunk,
        ),
        max_queue=args.max_queue,
        batching=Batching(max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms),
        max_active_streams=args.max_active_streams,
    )
    try:
        asyncio.run(run_until_signal(app, server_options(args)))
    except (ValueError, ModelSourceError) as exc:  # flags that cannot serve together, or no model to load
        log.error("cannot start: %s", exc)
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
