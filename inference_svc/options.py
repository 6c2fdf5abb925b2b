"""The flags that decide which model is served and in which format: shared by the service and ``prepare``.

``python -m inference_svc.prepare`` converts ahead of time exactly what a service start with the same
flags (or ``REPRISE_INFERENCE_*`` variables) will load, so both parsers take them from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inference_svc.core.engine import EngineConfig
from reprise.rpc.config import EnvArgumentParser


def add_model_options(parser: EnvArgumentParser) -> None:
    """The model, its cache, the placement and the precision flags (the README table lists them with the service)."""
    parser.add_option(
        "--model",
        default="default",
        help="'default' (packaged Qwen2.5-Coder-0.5B-Instruct GGUF), a model directory, a .gguf file, or a hub id",
    )
    parser.add_option("--model-cache", default=".models", type=Path, help="where the assembled and converted models live")
    parser.add_option("--cpus", default="", help="pin to these CPUs, e.g. 0-3 or 0,2 (empty: the inherited affinity)")
    parser.add_option(
        "--dtype", default="auto", choices=("auto", "bf16", "fp32"),
        help="compute dtype; auto = bf16 with int4 weights on AMX CPUs; elsewhere fp32 with int4 weights and int8 activations through Reprise's AVX2 kernel (AVX512-VNNI where present; on AVX512-BF16 CPUs without AMX, such as AMD Zen 4, this beats bf16), or where that kernel cannot serve bf16 (AVX512-BF16) or fp16 weights through fbgemm; decided from CPU features, never timed, so every start on a machine serves the same format",
    )
    parser.add_option(
        "--weights", default="auto", choices=("auto", "int4", "int8", "fp16", "dense"),
        help="weight format; auto = int4 (group 32) under bf16; when --dtype auto picks fp32, int4 through Reprise's AVX2 kernel where it builds and runs (AVX2, FMA, F16C, a C compiler), else fp16 (fbgemm); dense under an explicit --dtype fp32; int8 needs bf16, fp16 needs fp32",
    )
    parser.add_flag("--no-dense-prefill", help="drop the dense copy of int4/int8 weights used for prefill (bf16; fp16 under fp32 with --activations fp32; int8 activations keep none): saves memory, slower prefill")
    parser.add_option(
        "--int4-kernel", default="auto", choices=("auto", "torch"),
        help="int4 decode rows (and 2-31 rows on AMX): auto = Reprise's AVX512-BF16 kernel, compiled with the system C compiler into <model-cache>/native at first start, where it builds and the CPU has AVX512-BF16 (else torch's); torch = always torch's. Under fp32, int4 weights always use Reprise's AVX2 kernel (torch here means no int4)",
    )
    parser.add_option(
        "--decode-ops", default="auto", choices=("auto", "torch"),
        help="the small operations of a one-token decode step (norms, RoPE + KV write + attention, SiLU): auto = fused in C (built with the int4 kernel into <model-cache>/native; any x86-64 CPU), torch's where that does not build; torch = always torch's",
    )
    parser.add_option(
        "--activations", default="auto", choices=("auto", "int8", "fp32"),
        help="activations of int4 layers under fp32 (CPUs without bf16): auto = int8, each row quantized per 32 inputs (like llama.cpp's Q8_0) and multiplied in integers by Reprise's AVX2 kernel for every row count, with no fp16 prefill copy; fp32 = fp32 activations (the AVX2 kernel for 1-31 rows, the fp16 copy through fbgemm for more); int8 elsewhere is an error",
    )
    parser.add_flag("--no-generic", help="refuse a model the fast forward does not implement (naming the config field) instead of serving it through transformers (fp32, slower)")
    parser.add_flag("--no-tie-embeddings", help="keep a separate input embedding even where the model's config ties it to the LM head (an untied model always keeps its own)")


def engine_config(args: argparse.Namespace, **serving: Any) -> EngineConfig:
    """The :class:`EngineConfig` of the flags added by :func:`add_model_options`, plus ``serving`` fields."""
    return EngineConfig(
        model=args.model,
        cache_dir=args.model_cache,
        dtype=args.dtype,
        weights=args.weights,
        dense_prefill=not args.no_dense_prefill,
        tie_embeddings=not args.no_tie_embeddings,
        int4_kernel=args.int4_kernel,
        decode_ops=args.decode_ops,
        activations=args.activations,
        generic=not args.no_generic,
        **serving,
    )
