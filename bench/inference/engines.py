"""Building an ``Engine`` for the inference benchmark and its exploratory scripts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.runtime import placement

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MODEL_CACHE = ROOT / ".models"


def add_model_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-cache", type=Path, default=MODEL_CACHE, help="where `make model` put the model")


def make_engine(dtype: str = "auto", weights: str = "auto", cache: Path = MODEL_CACHE, **kwargs: Any) -> Engine:
    """A loaded, warmed-up engine: the state a server is in when it reports SERVING."""
    engine = Engine(EngineConfig(cache_dir=cache, dtype=dtype, weights=weights, **kwargs))
    engine.load()
    engine.warm_up()
    return engine


def serving_engine(cache: Path = MODEL_CACHE, weights: str = "auto") -> Engine:
    """The format the service picks on this CPU, on every CPU the process may use (a script's setup)."""
    placement.apply("")
    return make_engine("auto", weights, cache)
