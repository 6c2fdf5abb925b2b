"""`python -m inference_svc.prepare --all-formats --prune`, as the image build runs it, on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.runtime import loader, precision
from inference_svc.runtime.native.torch_layout import torch_int4_block, torch_int4_layout, torch_int4_values

ROOT = Path(__file__).resolve().parents[3]


def test_every_format_auto_can_pick_is_prepared_and_each_starts_without_converting(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "inference_svc.prepare", "--model", str(tiny_model_dir), "--model-cache", str(cache),
         "--all-formats", "--prune"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    formats = precision.anywhere("auto", "auto", "auto")
    specs = [loader.RuntimeSpec(p.dtype, p.weights, activations=acts) for p, acts in formats]
    revision = next((cache / "converted").iterdir()).name.split("-")[0]
    assert sorted(d.name for d in (cache / "converted").iterdir()) == sorted(
        f"{revision}-{s.name}-v2" for s in specs
    )
    assert "int4-bf16-tied-pf-h4" in proc.stderr and "fp16-fp32-tied" in proc.stderr  # each logged
    assert tiny_model_dir.exists()  # a user's own model is never pruned
    # Each format, asked for by name as a node would resolve it, loads from the copy and answers.
    for spec in specs:
        dtype = "bf16" if spec.dtype == torch.bfloat16 else "fp32"
        engine = Engine(EngineConfig(model=str(tiny_model_dir), cache_dir=cache, dtype=dtype,
                                     weights=spec.weights.value, activations=spec.activations))
        engine.load()
        assert engine.loaded is not None and engine.loaded.spec == spec
        assert not engine.loaded.converted, f"{spec.name} was converted at start, not found"
        (result,) = engine.classify_batch(["I love this phone"])
        assert 0.0 <= result.p_positive <= 1.0


def test_an_int4_copy_converted_on_another_kind_of_cpu_gives_the_same_answers(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """torch lays int4 weights out in 64-row blocks on AVX-512 CPUs and 32-row ones on AVX2: an image built on
    one and run on the other must re-lay them out, not multiply the wrong nibbles."""
    texts = ["I love this phone", "服务太差了", "the battery lasts all day"]
    config = EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path, dtype="bf16", weights="int4")
    here = Engine(config)
    here.load()
    path = next((tmp_path / "converted").glob("*-int4-bf16-*")) / loader.RUNTIME_FILE
    expected = [r.p_positive for r in here.classify_batch(texts)]
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    block = torch_int4_block()
    assert metadata[loader.TORCH_INT4_BLOCK] == str(block)  # recorded where converted
    other = 96 - block  # 64 <-> 32
    moved = [name for name in tensors if name.endswith(".q4")]
    assert moved, "the bf16 int4 copy holds torch-layout weights"
    for name in moved:
        tensors[name] = torch_int4_layout(torch_int4_values(tensors[name], block), other)
    save_file(tensors, str(path), metadata={**metadata, loader.TORCH_INT4_BLOCK: str(other)})
    there = Engine(config)
    with caplog.at_level("INFO", logger=loader.__name__):
        there.load()
    assert any(f"from {other}-row blocks" in r.getMessage() for r in caplog.records)
    assert [r.p_positive for r in there.classify_batch(texts)] == expected
    # One row (a decode step) goes through the int4 weights themselves, in every layer and the LM head.
    shape = here.model.shape
    widths = (shape.hidden, shape.heads * shape.head_dim, shape.hidden, shape.intermediate)  # qkv, o, gate_up, down
    g = torch.Generator().manual_seed(1)
    for la, lb in zip(here.model.layers, there.model.layers):
        for a, b, width in zip(la.linears, lb.linears, widths):
            x = torch.randn(1, width, generator=g).bfloat16()
            assert torch.equal(a(x), b(x))
    x = torch.randn(1, shape.hidden, generator=g).bfloat16()
    assert torch.equal(here.model.head(x), there.model.head(x))
