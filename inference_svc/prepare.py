"""``python -m inference_svc.prepare``: assemble, verify and convert the model once, then exit.

Run by ``make model`` and at image build time, so a service start only reads
the converted copy. Takes the service's model and precision flags, so it
prepares exactly the format the service will load.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from inference_svc.core import placement
from inference_svc.core.engine import Engine, EngineConfig
from reprise.rpc.config import EnvArgumentParser
from reprise.rpc.logs import configure_logging


def main() -> None:
    parser = EnvArgumentParser("REPRISE_INFERENCE_", prog="python -m inference_svc.prepare", description=__doc__)
    parser.add_option("--cpus", default="", help="same as the service's --cpus (the dtype probe is timed on them)")
    parser.add_option("--model", default="default", help="same as the service's --model")
    parser.add_option("--model-cache", default=".models", type=Path, help="same as the service's --model-cache")
    parser.add_option("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="same as the service's --dtype")
    parser.add_option("--weights", default="auto", choices=("auto", "int4", "int8", "fp16", "dense"), help="same as the service's --weights")
    parser.add_flag("--no-dense-prefill", help="same as the service's --no-dense-prefill")
    parser.add_flag("--no-tie-embeddings", help="same as the service's --no-tie-embeddings")
    parser.add_option("--activations", default="auto", choices=("auto", "int8", "fp32"), help="same as the service's --activations")
    args = parser.parse_args()
    configure_logging("inference", "INFO", "text")
    try:
        where = placement.apply(args.cpus)  # before any torch work, as the service does
    except ValueError as exc:
        parser.error(str(exc))
    logging.getLogger(__name__).info("placement: %s", where.describe())
    start = time.perf_counter()
    engine = Engine(
        EngineConfig(
            model=args.model,
            cache_dir=args.model_cache,
            dtype=args.dtype,
            weights=args.weights,
            dense_prefill=not args.no_dense_prefill,
            tie_embeddings=not args.no_tie_embeddings,
            activations=args.activations,
        )
    )
    engine.load()
    logging.getLogger(__name__).info("model ready in %.1fs: %s", time.perf_counter() - start, engine.describe())


if __name__ == "__main__":
    main()
