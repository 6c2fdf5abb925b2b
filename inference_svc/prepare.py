"""``python -m inference_svc.prepare``: assemble, verify and convert the model once, then exit.

Run by ``make model`` and at image build time, so a service start only reads
the converted copy. Takes the service's model and precision flags, so it
prepares exactly the format the service will load here; ``--all-formats``
also converts every format those flags can pick on another CPU (an image is
built on one machine and runs on others), and ``--prune`` then deletes what
only a conversion reads (the assembled GGUF and the fp32 copy).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.options import add_model_options, engine_config
from inference_svc.runtime import loader, model_source, placement, precision
from inference_svc.runtime.architecture import UnsupportedModel
from reprise.rpc.config import EnvArgumentParser
from reprise.rpc.logs import configure_logging

log = logging.getLogger(__name__)


def main() -> None:
    parser = EnvArgumentParser("REPRISE_INFERENCE_", prog="python -m inference_svc.prepare", description=__doc__)
    add_model_options(parser)  # the service's own: the same flags prepare the format it loads
    parser.add_flag("--all-formats", help="also convert every format these flags can pick on other CPUs (for images run on mixed nodes)")
    parser.add_flag("--prune", help="then delete what only a conversion reads: the assembled default GGUF and the fp32 copy")
    args = parser.parse_args()
    configure_logging("inference", "INFO", "text")
    try:
        where = placement.apply(args.cpus)  # before any torch work, as the service does
    except ValueError as exc:
        parser.error(str(exc))
    log.info("placement: %s", where.describe())
    start = time.perf_counter()
    config = engine_config(args)
    source = model_source.resolve(config.model, config.cache_dir)  # once: a user's GGUF is hashed to resolve it
    if args.all_formats:
        prepare_all_formats(config, source)
    engine = Engine(config)
    engine.load()  # this CPU's choice, loaded end to end: it also builds the native kernels
    log.info("model ready in %.1fs: %s", time.perf_counter() - start, engine.describe())
    if args.prune:
        prune(source, config.cache_dir)


def prepare_all_formats(config: EngineConfig, source: model_source.ResolvedModel) -> None:
    """Convert ``source`` (``config``'s model) to every format its flags can resolve to on any CPU."""
    formats = precision.anywhere(config.dtype, config.weights, config.activations)
    if not formats:
        raise SystemExit("these --dtype/--weights/--activations resolve to no format on any CPU")
    try:
        shape = loader.check_source(source, config.cache_dir)  # refuses before converting
    except UnsupportedModel as exc:
        if not config.generic:
            raise
        log.info("nothing to convert: the model is served through transformers (%s)", exc)
        return
    for chosen, activations in formats:
        spec = config.runtime_spec(chosen, activations, shape.tied)
        target, converted = loader.prepare(source, config.cache_dir, spec)
        log.info("format %s: %s %s", spec.name, "converted to" if converted else "found in", target)


def prune(source: model_source.ResolvedModel, cache_dir: Path) -> None:
    """Delete the intermediates of conversion made in ``cache_dir``: the fp32 copy and the assembled default GGUF.

    A user's own GGUF or model directory is never touched. Starts read only the converted copies; a
    start that needs a format not converted fails with the list of those present (``loader.prepare``).
    """
    for path in (loader.fp32_copy_dir(source, cache_dir), *model_source.assembled_files(source, cache_dir)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()  # a file, or a link to one the cache does not own
        else:
            continue
        log.info("pruned %s", path)


if __name__ == "__main__":
    main()
