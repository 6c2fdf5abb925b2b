"""Preparing converted copies: what a start finds, what it refuses to redo, and what an image can drop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference_svc import prepare
from inference_svc.runtime import loader, model_source
from inference_svc.runtime.weights import WeightFormat

INT4_FP32 = loader.RuntimeSpec(torch.float32, WeightFormat.INT4, activations="int8")
FP16 = loader.RuntimeSpec(torch.float32, WeightFormat.FP16)


def _copy(cache: Path, source: model_source.ResolvedModel, spec: loader.RuntimeSpec) -> Path:
    """A converted copy as far as a start can tell: its directory with the runtime file in it."""
    target = loader.runtime_dir(cache, source, spec)
    target.mkdir(parents=True)
    (target / loader.RUNTIME_FILE).write_bytes(b"")
    return target


def test_resolving_the_default_model_touches_nothing(tmp_path: Path) -> None:
    """Its revision is the known SHA-256: a start that finds its copy needs no GGUF and no part packages."""
    source = model_source.resolve("default", tmp_path / "cache")
    assert source.revision == model_source.DEFAULT_GGUF_SHA256[:16]
    assert not (tmp_path / "cache").exists()


def test_a_copy_that_is_there_is_found_without_converting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = model_source.resolve("default", tmp_path)
    target = _copy(tmp_path, source, INT4_FP32)
    monkeypatch.setattr(loader, "_convert", lambda *a: pytest.fail("found, not converted"))
    monkeypatch.setattr(loader, "_writable", lambda d: pytest.fail("nothing to write"))
    assert loader.prepare(source, tmp_path, INT4_FP32) == (target, False)


def test_a_missing_copy_in_a_cache_it_cannot_write_fails_at_once_naming_those_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only image started with a format it was not built with: say so before a minute of dequantizing."""
    source = model_source.resolve("default", tmp_path)
    _copy(tmp_path, source, FP16)
    _copy(tmp_path, source, INT4_FP32)
    monkeypatch.setattr(loader, "_writable", lambda d: False)
    monkeypatch.setattr(loader, "_convert", lambda *a: pytest.fail("cannot write: must not start converting"))
    bf16 = loader.RuntimeSpec(torch.bfloat16, WeightFormat.INT4)
    with pytest.raises(model_source.ModelSourceError) as err:
        loader.prepare(source, tmp_path, bf16)
    message = str(err.value)
    assert "no converted copy as int4-bf16-tied-pf-h4" in message
    assert "copies present: fp16-fp32-tied, int4-fp32-tied-h4" in message
    assert "python -m inference_svc.prepare" in message and "MODEL_DTYPE" in message


def test_writable_asks_the_nearest_directory_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Path] = []
    monkeypatch.setattr(loader.os, "access", lambda path, mode: asked.append(Path(path)) or True)
    assert loader._writable(tmp_path / "converted" / "deeper")
    assert asked == [tmp_path]


def test_prune_drops_the_intermediates_and_keeps_the_copies(tmp_path: Path) -> None:
    source = model_source.resolve("default", tmp_path)
    kept = _copy(tmp_path, source, INT4_FP32)
    hf = model_source.converted_dir(tmp_path, source, "hf-fp32")
    hf.mkdir(parents=True)
    (hf / "model.safetensors").write_bytes(b"weights")
    gguf = tmp_path / model_source.DEFAULT_GGUF_NAME
    gguf.write_bytes(b"gguf")
    gguf.with_suffix(".sha256").write_text(model_source.DEFAULT_GGUF_SHA256)
    prepare.prune(source, tmp_path)
    assert not hf.exists() and not gguf.exists() and not gguf.with_suffix(".sha256").exists()
    assert (kept / loader.RUNTIME_FILE).exists()
    prepare.prune(source, tmp_path)  # nothing left to drop: no error


def test_prune_never_deletes_a_users_own_model(tmp_path: Path) -> None:
    own = tmp_path / "mine" / "model.gguf"
    own.parent.mkdir()
    own.write_bytes(b"gguf")
    cache = tmp_path / "cache"
    source = model_source.resolve(str(own), cache)
    hf = model_source.converted_dir(cache, source, "hf-fp32")
    hf.mkdir(parents=True)
    prepare.prune(source, cache)
    assert own.exists() and not hf.exists()
