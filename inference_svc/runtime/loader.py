"""Loading a model into the serving runtime, through two cached conversions.

1. A GGUF (or hub) model is loaded once with transformers, which dequantizes
   it (~1 min, ~4 GB peak) and saved as an fp32 safetensors copy
   (``converted/<rev>-hf-fp32-v2``). Local Hugging Face directories skip this.
2. That copy is converted into the serving format chosen by
   :class:`RuntimeSpec` (fused QKV and gate/up projections, quantized weights,
   optional dense prefill copy) and saved with the tokenizer as
   ``converted/<rev>-<format>-v2``. Later starts only read this directory:
   a few seconds.

Both conversions write to a temporary directory and rename it, so an
interrupted conversion never leaves a half-written copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from inference_svc.runtime import generic, model_source, precision, vision
from inference_svc.runtime.model import Layer, ModelShape, Transformer
from inference_svc.runtime.native import int4_gemv
from inference_svc.runtime.native.decode_ops import DECODE_OPS_NAME, load_decode_ops
from inference_svc.runtime.native.library import NativeUnavailable
from inference_svc.runtime.native.torch_layout import relayout_torch_int4, torch_int4_block
from inference_svc.runtime.weights import (
    INT4_GROUP,
    Linear,
    WeightFormat,
    int4_fp32_supported,
    int4_supported,
    make_linear,
    onednn_packing,
    quantize_int4,
    quantize_int4_fp32,
)

log = logging.getLogger(__name__)

RUNTIME_FILE = "runtime.safetensors"
_COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json",
)


@dataclass(frozen=True)
class RuntimeSpec:
    """How weights are held in memory."""

    dtype: torch.dtype
    weights: WeightFormat
    #: Keep a dense copy of quantized layers for multi-row (prefill, batched) matmuls.
    dense_prefill: bool = True
    #: Use the LM head's weights for the input embedding too (saves a vocab x hidden matrix).
    tie_embeddings: bool = True
    #: int4 under fp32 only: "int8" quantizes each row's activations to int8 per 32 inputs for every row
    #: count (:class:`.native.Int4KernelF32`), so no fp16 prefill copy is made; "fp32" keeps them fp32.
    activations: str = "fp32"

    @property
    def int8_activations(self) -> bool:
        return self.activations == "int8" and self.dtype == torch.float32 and self.weights is WeightFormat.INT4

    @property
    def prefill_copy(self) -> bool:
        """Quantized layers also keep a dense copy for multi-row products (none where int8 activations serve)."""
        return self.dense_prefill and self.weights in (WeightFormat.INT8, WeightFormat.INT4) and not self.int8_activations

    @property
    def head_shortlist(self) -> bool:
        """The int8 LM head also gets an int4 copy that shortlists the candidates (see ``Transformer.logits``)."""
        if self.dtype == torch.float32:
            return self.weights is WeightFormat.INT4
        return self.weights in (WeightFormat.INT8, WeightFormat.INT4)

    @property
    def name(self) -> str:
        dtype = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        parts = [self.weights.value, dtype]
        if self.tie_embeddings:
            parts.append("tied")
        if self.prefill_copy:
            parts.append("pf")
        if self.head_shortlist:
            parts.append("h4")
        return "-".join(parts)


@dataclass
class LoadedModel:
    tokenizer: Any
    #: The fast forward, or transformers' model behind its interface (:class:`.generic.GenericModel`).
    model: Transformer
    source: model_source.ResolvedModel
    spec: RuntimeSpec
    load_seconds: float
    #: True when this start had to convert (slow path) instead of reading the cached copy.
    converted: bool
    weight_bytes: int
    decode_bytes: int
    #: Which kernel multiplies the int4 decode rows: ``int4_gemv.NAME``, "torch", or "" (no int4 weights).
    int4_kernel: str = ""
    #: Who runs a one-token step's small operations: ``DECODE_OPS_NAME``, "torch", or "transformers"
    #: (the whole model, on the generic path).
    decode_ops: str = "torch"

    @property
    def serving_format(self) -> str:
        """Everything a start decides that can move an answer's bits: the converted format (dtype, weights,
        copies), the activations, the int4 kernel and who runs a decode step's small operations."""
        spec = self.spec
        acts = "int8" if spec.int8_activations else "bf16" if spec.dtype == torch.bfloat16 else "fp32"
        note = getattr(self.model, "format_note", "")  # e.g. a VL model's picture size cap (.vision)
        return f"{spec.name}/{acts}/{self.int4_kernel or '-'}/{self.decode_ops}" + (f"/{note}" if note else "")

    @property
    def revision(self) -> str:
        """The model's identity as reported to the gateway, which keys cached answers on it: the content
        revision of the weights, then a digest of :attr:`serving_format` (replicas serving another format
        answer differently in the last bits, so they must not share answers)."""
        return f"{self.source.revision}.{hashlib.sha256(self.serving_format.encode()).hexdigest()[:8]}"


def fp32_copy_dir(source: model_source.ResolvedModel, cache_dir: Path) -> Path:
    """Where the first conversion saves a GGUF or hub model as fp32 safetensors (read by later conversions only)."""
    return model_source.converted_dir(cache_dir, source, "hf-fp32")


def _hf_dir(source: model_source.ResolvedModel, cache_dir: Path) -> Path:
    """A local Hugging Face directory with the model's weights in fp32 or better, converting once."""
    if source.gguf_file is None and Path(source.location).is_dir():
        return Path(source.location)
    target = fp32_copy_dir(source, cache_dir)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model_source.materialize(source, cache_dir)
    log.info("loading %s with transformers once (slow); later starts use the converted copy", source.model_id)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=torch.float32)
    model_source.save_converted(model, tokenizer, target, source)
    log.info("saved fp32 copy %s in %.1fs", target, time.perf_counter() - start)
    return target


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    if not state:
        raise model_source.ModelSourceError(f"{directory} has no *.safetensors weights")
    return state


def _tensor_names(directory: Path) -> list[str]:
    """The tensor names of a directory's ``*.safetensors`` files, read from their headers only."""
    names: list[str] = []
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            names += list(st.keys())
    if not names:
        raise model_source.ModelSourceError(f"{directory} has no *.safetensors weights")
    return names


def check_source(source: model_source.ResolvedModel, cache_dir: Path) -> ModelShape:
    """``source``'s shape, refusing (naming the config field or the tensors) what the runtime would serve wrongly.

    Reads the config (:func:`source_config`) and, for a local directory, its tensor names: at start,
    before any format is chosen or anything converted. (A GGUF's tensors are checked when converted.)
    """
    shape = ModelShape.from_config(source_config(source, cache_dir))
    if source.gguf_file is None and Path(source.location).is_dir():
        check_tensors(_tensor_names(Path(source.location)), shape)
    return shape


def _read_aligned(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file into 64-byte-aligned tensors, with its metadata.

    Tensors straight from safetensors sit at the file's byte offsets, which are
    not 64-byte aligned; torch's AVX-512 int8 kernel crashes on such weights
    (seen with 4-row inputs). A clone lands in torch's aligned allocator.
    """
    out: dict[str, torch.Tensor] = {}
    with safe_open(path, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            out[name] = f.get_tensor(name).clone()
        return out, f.metadata() or {}


#: Metadata key of a converted copy: rows per block of torch's int4 layout where it was converted.
TORCH_INT4_BLOCK = "torch_int4_block"


def _relayout_torch_int4(tensors: dict[str, torch.Tensor], saved: str | None, copy: str) -> None:
    """Re-lay torch-layout int4 weights converted on another kind of CPU out for this one (in place).

    ``saved``: the copy's :data:`TORCH_INT4_BLOCK` record. Copies saved before the block was recorded
    are read as this CPU's (they were converted where they run).
    """
    if saved is None:
        return
    try:
        if int(saved) == torch_int4_block():
            return
    except NativeUnavailable as exc:
        raise model_source.ModelSourceError(
            f"{copy} holds torch int4 weights in {saved}-row blocks, and {exc}: convert the model here"
        ) from exc
    start = time.perf_counter()
    names = [name for name in tensors if name.endswith(".q4")]
    for name in names:
        tensors[name] = relayout_torch_int4(tensors[name], int(saved))
    log.info(
        "re-laid %d int4 weights out from %s-row blocks (where converted) to this CPU's %d in %.1fs",
        len(names), saved, torch_int4_block(), time.perf_counter() - start,
    )


class UnusedWeights(model_source.ModelSourceError):
    """The checkpoint holds tensors the fast forward would not read: serving it would silently drop them."""


def expected_tensors(shape: ModelShape) -> set[str]:
    """The Hugging Face tensor names the runtime reads for ``shape``: biases only where the config implies them
    (transformers drops any other on load, so the runtime must too), Qwen3's head norms, the LM head if untied."""
    names = {"model.embed_tokens.weight", "model.norm.weight"} | (set() if shape.tied else {"lm_head.weight"})
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{n}_proj.weight" for n in "qkvo"}
        names |= {p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {p + f"self_attn.{n}_proj.bias" for n in "qkv"} if shape.attn_bias else set()
        names |= {p + "self_attn.o_proj.bias"} if shape.o_bias else set()
        names |= {p + f"mlp.{n}_proj.bias" for n in ("gate", "up", "down")} if shape.mlp_bias else set()
        names |= {p + f"self_attn.{n}_norm.weight" for n in "qk"} if shape.qk_norm else set()
    return names


def check_tensors(names: set[str] | list[str], shape: ModelShape) -> None:
    """Refuse a checkpoint whose tensors are not exactly those the runtime reads for its config, naming them.

    A tensor the forward would skip (a bias the config does not declare, a norm of another architecture)
    changes answers without a word; a missing one is a broken checkpoint. (A tied model's ``lm_head.weight``
    is ignored, as transformers ties it to the embedding on load; RoPE buffers are recomputed.)
    """
    expected, present = expected_tensors(shape), set(names)
    missing = sorted(expected - present)
    if missing:
        raise model_source.ModelSourceError(f"the checkpoint lacks tensors its config implies: {_some(missing)}")
    unused = sorted(n for n in present - expected if not n.endswith("rotary_emb.inv_freq") and n != "lm_head.weight")
    if unused:
        raise UnusedWeights(f"the fast forward would not read these tensors of the checkpoint: {_some(unused)}")


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def build_runtime_tensors(state: dict[str, torch.Tensor], shape: ModelShape, spec: RuntimeSpec) -> dict[str, torch.Tensor]:
    """Fuse, quantize and rename a Hugging Face Llama/Qwen2/Qwen3/Mistral state dict into the runtime layout.

    ``state`` must hold exactly the tensors the runtime reads (:func:`check_tensors`). The embedding
    is the LM head's only where the config ties them and ``spec`` says to share the matrix.
    """
    if spec.tie_embeddings and not shape.tied:
        raise ValueError(f"{spec.name} reuses the LM head as the embedding, but this model's config does not tie them")
    check_tensors(list(state), shape)
    get = lambda name: state[name].float()  # noqa: E731
    fmt, dtype, pf = spec.weights, spec.dtype, spec.prefill_copy
    head_fmt = WeightFormat.DENSE if fmt is WeightFormat.DENSE else WeightFormat.INT8
    out: dict[str, torch.Tensor] = {}
    embed = get("model.embed_tokens.weight")
    head_w = embed if shape.tied else get("lm_head.weight")  # tied: transformers ignores a saved lm_head too
    head = make_linear(head_w, None, head_fmt, dtype, dense_copy=False)
    if spec.head_shortlist and dtype == torch.float32 and int4_fp32_supported(tuple(head_w.shape)):
        head.native, _ = quantize_int4_fp32(head_w)  # the fp32 kernel's layout, saved as converted
    elif spec.head_shortlist and int4_supported(tuple(head_w.shape)):
        head.q4, head.sz4, _ = quantize_int4(head_w, INT4_GROUP, dtype)
    out.update(head.tensors("head"))
    if not spec.tie_embeddings:
        out.update(make_linear(embed, None, head_fmt, dtype, dense_copy=False).tensors("embed"))
    out["norm"] = get("model.norm.weight")  # norms run on the fp32 residual
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        qkv_w = torch.cat([get(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        qkv_b = torch.cat([get(p + f"self_attn.{n}_proj.bias") for n in "qkv"]) if shape.attn_bias else None
        o_b = get(p + "self_attn.o_proj.bias") if shape.o_bias else None
        gu_w = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        gu_b = torch.cat([get(p + "mlp.gate_proj.bias"), get(p + "mlp.up_proj.bias")]) if shape.mlp_bias else None
        down_b = get(p + "mlp.down_proj.bias") if shape.mlp_bias else None
        out.update(make_linear(qkv_w, qkv_b, fmt, dtype, pf).tensors(f"L{i}.qkv"))
        out.update(make_linear(get(p + "self_attn.o_proj.weight"), o_b, fmt, dtype, pf).tensors(f"L{i}.o"))
        out.update(make_linear(gu_w, gu_b, fmt, dtype, pf).tensors(f"L{i}.gu"))
        out.update(make_linear(get(p + "mlp.down_proj.weight"), down_b, fmt, dtype, pf).tensors(f"L{i}.down"))
        out[f"L{i}.ln1"] = get(p + "input_layernorm.weight")
        out[f"L{i}.ln2"] = get(p + "post_attention_layernorm.weight")
        if shape.qk_norm:
            out[f"L{i}.q_norm"] = get(p + "self_attn.q_norm.weight")
            out[f"L{i}.k_norm"] = get(p + "self_attn.k_norm.weight")
    return {k: v.contiguous() for k, v in out.items()}


def build_transformer(
    tensors: dict[str, torch.Tensor],
    shape: ModelShape,
    spec: RuntimeSpec,
    max_context: int,
    int4_kernel: int4_gemv.Int4Kernel | int4_gemv.Int4KernelF32 | None = None,
) -> Transformer:
    lin = lambda name: Linear.from_tensors(name, tensors, INT4_GROUP)  # noqa: E731
    layers = [
        Layer(
            tensors[f"L{i}.ln1"], lin(f"L{i}.qkv"), lin(f"L{i}.o"), tensors[f"L{i}.ln2"], lin(f"L{i}.gu"), lin(f"L{i}.down"),
            tensors.get(f"L{i}.q_norm"), tensors.get(f"L{i}.k_norm"),
        )
        for i in range(shape.layers)
    ]
    head = lin("head")
    embed = lin("embed") if any(k.startswith("embed.") for k in tensors) else head
    if spec.weights is WeightFormat.FP16:
        # fp32 activations on a CPU without bf16: fbgemm's kernels, packed now (they cannot be saved packed).
        for linear in (x for l in layers for x in l.linears):
            linear.pack_fbgemm()
        head.pack_fbgemm()  # int8; its logits are read one row at a time and never feed the KV
    elif spec.dtype == torch.float32 and spec.weights is WeightFormat.INT4:
        # fp32 activations, int4 weights: Reprise's AVX2 kernel for decode rows (and every row of layers
        # without a prefill copy); the fp16 prefill copies and any layer the kernel cannot take go to fbgemm.
        if not isinstance(int4_kernel, int4_gemv.Int4KernelF32):
            raise ValueError("int4 weights under fp32 need Reprise's AVX2 int4 kernel")
        for linear in (x for l in layers for x in l.linears):
            if linear.dense is not None:
                linear.pack_fbgemm()
            if linear.native is not None:
                linear.use_fp32_kernel(int4_kernel)
        if head.native is not None:
            head.use_fp32_kernel(int4_kernel)  # the int4 shortlist; its int8 rows rescore (Transformer.logits)
        else:
            head.pack_fbgemm()
    elif spec.dtype == torch.bfloat16:
        body = [x for l in layers for x in l.linears if x.dense is not None]
        packable, why_not = onednn_packing()
        if body and packable:
            for linear in body:  # the dense (prefill) copies, reordered once instead of on every call
                linear.pack_onednn()
        elif body:
            log.warning("dense bf16 weights stay unpacked (each matmul reorders them): %s", why_not)
        if int4_kernel is not None:
            # Decode rows of int4 layers: the native kernel. Without AMX it multiplies one row at a time, so
            # only layers whose many-row products go elsewhere take it: those with a dense copy, and the
            # LM head (one row per sequence). With AMX it is also the faster many-row int4 kernel.
            fits = lambda x: x.q4 is not None and int4_kernel.supports(x.out_features, x.q4.shape[1] * 2, x.group)  # noqa: E731
            dense = lambda x: x.dense is not None or x.onednn is not None  # noqa: E731
            for linear in (x for l in layers for x in l.linears if fits(x) and (dense(x) or int4_kernel.amx)):
                linear.pack_native(int4_kernel)
            if fits(head):
                head.pack_native(int4_kernel)
    return Transformer(shape, layers, embed, head, tensors["norm"], spec.dtype, max_context)


def runtime_dir(cache_dir: Path, source: model_source.ResolvedModel, spec: RuntimeSpec) -> Path:
    return model_source.converted_dir(cache_dir, source, spec.name)


def int4_kernel(
    cache_dir: Path, spec: RuntimeSpec, choice: str
) -> tuple[int4_gemv.Int4Kernel | int4_gemv.Int4KernelF32 | None, str]:
    """The native int4 kernel when ``choice`` is "auto" and it builds and runs here, and the kernel's name.

    Under fp32 the int4 format exists only with Reprise's AVX2 kernel (:func:`fp32_int4` checked it
    before the format was chosen); failing to load it here is an error.
    """
    if spec.dtype == torch.float32 and spec.weights is WeightFormat.INT4:
        kernel32, why_not = _fp32_kernel(cache_dir, choice, spec.activations)
        if kernel32 is None:
            error = ValueError if choice == "torch" else NativeUnavailable
            raise error(f"int4 weights under fp32 need Reprise's AVX2 kernel: {why_not}")
        return kernel32, kernel32.name
    if spec.dtype != torch.bfloat16 or spec.weights not in (WeightFormat.INT4, WeightFormat.INT8):
        return None, ""
    if choice == "torch":
        return None, "torch"
    if choice != "auto":
        raise ValueError(f"int4 kernel must be 'auto' or 'torch', not {choice!r}")
    kernel, why_not = int4_gemv.load(cache_dir / "native")
    if kernel is None:
        log.info("int4 decode rows use torch's kernel: %s", why_not)
        return None, "torch"
    # Decided by what builds and runs here (AVX512-BF16, a compiler), never by a start-up timing: the two
    # kernels round differently, so a race on a busy machine would let replicas answer differently.
    log.info("int4 decode rows use Reprise's kernel%s", " and AMX for 2-31 rows" if kernel.amx else "")
    return kernel, int4_gemv.NAME


def race_int4_kernels(kernel: int4_gemv.Int4Kernel) -> tuple[float, float]:
    """Best time of one decode row through ``kernel`` and through torch's int4 kernel, on a probe layer.

    For the benchmark and for a user weighing ``--int4-kernel torch``; a start never times (see
    :func:`int4_kernel`). Best of 31 each, alternating; 0.05-0.3 s.
    """
    g = torch.Generator().manual_seed(0)
    q4, sz4, _ = quantize_int4(torch.randn(2048, 896, generator=g) * 0.05, INT4_GROUP, torch.bfloat16)
    packed, x = kernel.pack(q4, sz4), torch.randn(1, 896, generator=g).bfloat16()
    return precision.race(
        lambda: kernel(x, packed, 2048),
        lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q4, INT4_GROUP, sz4),
        repeat=31,
    )


def _fp32_kernel(cache_dir: Path, choice: str, activations: str = "fp32") -> tuple[int4_gemv.Int4KernelF32 | None, str]:
    """Reprise's AVX2 kernel, or ``(None, why not)``: ``--int4-kernel torch``, or it cannot build or run here."""
    if choice not in ("auto", "torch"):
        raise ValueError(f"int4 kernel must be 'auto' or 'torch', not {choice!r}")
    if choice == "torch":
        return None, "--int4-kernel torch: torch has no int4 kernel for fp32 activations (use --weights fp16)"
    return int4_gemv.load_fp32(cache_dir / "native", activations)


def fp32_int4(cache_dir: Path, choice: str) -> tuple[bool, str]:
    """Whether int4 weights can serve fp32 activations here, and why (a :data:`.precision.Int4Probe`).

    They can where Reprise's AVX2 kernel builds and runs (AVX2, FMA, F16C and a C compiler) and
    ``choice`` (``--int4-kernel``) is "auto": a fact about this CPU and image, the same at every start.
    """
    kernel, why_not = _fp32_kernel(cache_dir, choice)
    if kernel is None:
        return False, why_not
    return True, f"{kernel.name} builds and runs here"


def source_config(source: model_source.ResolvedModel, cache_dir: Path) -> dict[str, Any]:
    """``source``'s ``config.json``, read before any format is chosen (to refuse a model first, and tie by it).

    A local directory has it; a GGUF or hub model has it in any converted copy already made, else it
    is converted to the fp32 copy now (which the start would do anyway, and which later starts read).
    """
    if source.gguf_file is None and Path(source.location).is_dir():
        return json.loads((Path(source.location) / "config.json").read_text())
    for path in (fp32_copy_dir(source, cache_dir), *model_source.converted_variants(cache_dir, source).values()):
        if (path / "config.json").exists():
            return json.loads((path / "config.json").read_text())
    if not _writable(cache_dir / "converted"):
        raise model_source.ModelSourceError(
            f"{source.model_id} has no converted copy in {cache_dir / 'converted'}, and this process cannot write "
            "there to convert it: prepare it where the cache is writable (python -m inference_svc.prepare)"
        )
    return json.loads((_hf_dir(source, cache_dir) / "config.json").read_text())


def load_generic(source: model_source.ResolvedModel, cache_dir: Path, max_context: int) -> LoadedModel:
    """``source`` through transformers' own model (:mod:`.generic`): fp32, no conversion beyond a GGUF's fp32 copy.

    A vision-language checkpoint (:func:`.vision.is_vision_dir`) loads its image-text model class and image
    processor: a :class:`.vision.VisionModel`, which also takes images.
    """
    start = time.perf_counter()
    directory = _hf_dir(source, cache_dir)
    config = json.loads((directory / "config.json").read_text())
    load_model = vision.load if vision.is_vision_dir(directory, config) else generic.load
    tokenizer, model, weight_bytes = load_model(directory, max_context)
    spec = RuntimeSpec(torch.float32, WeightFormat.DENSE, dense_prefill=False, tie_embeddings=False)
    loaded = LoadedModel(
        tokenizer, model, source, spec, time.perf_counter() - start, False, weight_bytes, weight_bytes, "", generic.RUNTIME,
    )
    log.warning(
        "serving %s (%s, revision %s) through transformers: correct, but slower than the fast forward (no "
        "quantized weights, no fused kernels, classify one text at a time)",
        source.model_id, model.shape.architecture, loaded.revision,
    )
    return loaded


def load(
    model: str | model_source.ResolvedModel,
    cache_dir: Path,
    spec: RuntimeSpec,
    max_context: int,
    int4: str = "auto",
    decode_ops: str = "auto",
) -> LoadedModel:
    """Resolve ``model`` (unless given resolved), convert it to ``spec`` once (cached under ``cache_dir``), and load it.

    ``int4``: "auto" multiplies int4 decode rows with Reprise's kernel where it builds and the
    CPU has AVX512-BF16 (:mod:`.native`), "torch" always with torch's. Under fp32, int4 weights
    always use Reprise's AVX2 kernel. ``decode_ops``: "auto" runs one-token steps through the fused C
    operations (:class:`.native.DecodeOps`) where they build, "torch" through torch's.
    """
    from transformers import AutoTokenizer

    if decode_ops not in ("auto", "torch"):  # before the slow part, not after it
        raise ValueError(f"decode ops {decode_ops!r}: expected 'auto' or 'torch'")
    if spec.activations not in int4_gemv.ACTIVATIONS:
        raise ValueError(f"activations {spec.activations!r}: expected one of {int4_gemv.ACTIVATIONS}")
    start = time.perf_counter()
    source = model if isinstance(model, model_source.ResolvedModel) else model_source.resolve(model, cache_dir)
    target, converted = prepare(source, cache_dir, spec)
    config = json.loads((target / "config.json").read_text())
    shape = ModelShape.from_config(config)
    tensors, metadata = _read_aligned(target / RUNTIME_FILE)
    _relayout_torch_int4(tensors, metadata.get(TORCH_INT4_BLOCK), target.name)
    tokenizer = AutoTokenizer.from_pretrained(target)
    kernel, kernel_name = int4_kernel(cache_dir, spec, int4)
    transformer = build_transformer(tensors, shape, spec, min(max_context, shape.max_positions), kernel)
    if decode_ops == "auto":
        ops, why_not = load_decode_ops(cache_dir / "native")
        transformer.use_decode_ops(ops)
        if transformer.ops is None:
            log.warning("one-token steps run torch's operations: %s", why_not or "the fused ones do not fit this model")
    del tensors  # packed layers (fbgemm, oneDNN) no longer need their unpacked copy
    layers = [t for l in transformer.layers for t in l.linears]
    decode_bytes = sum(x.decode_bytes for x in (*layers, transformer.head))
    norms = [transformer.norm, *(t for l in transformer.layers for t in (l.ln1, l.ln2))]
    linears = {id(x): x for x in (*layers, transformer.head, transformer.embed)}.values()
    weight_bytes = sum(x.memory_bytes for x in linears) + sum(t.numel() * t.element_size() for t in norms)
    seconds = time.perf_counter() - start
    ops_name = DECODE_OPS_NAME if transformer.ops is not None else "torch"
    loaded = LoadedModel(
        tokenizer, transformer, source, spec, seconds, converted, weight_bytes, decode_bytes, kernel_name, ops_name
    )
    log.info(
        "loaded %s (%s, revision %s: weights %s served as %s) in %.1fs%s: %.0f MB in memory, %.0f MB read per "
        "decoded token%s, decode step ops %s",
        source.model_id, shape.architecture, loaded.revision, source.revision, loaded.serving_format, seconds,
        " (converted this start)" if converted else "", weight_bytes / 1e6, decode_bytes / 1e6,
        f", int4 decode kernel {kernel_name}" if kernel_name else "", ops_name,
    )
    return loaded


def prepare(source: model_source.ResolvedModel, cache_dir: Path, spec: RuntimeSpec) -> tuple[Path, bool]:
    """The directory of ``source`` converted to ``spec``, and whether this call converted it (slow) or found it.

    A missing copy in a cache this process cannot write (a read-only image) fails at once, naming
    the copies that are there, instead of after a minute of dequantizing.
    """
    target = runtime_dir(cache_dir, source, spec)
    if (target / RUNTIME_FILE).exists():
        return target, False
    if not _writable(target.parent):
        present = [v for v, p in model_source.converted_variants(cache_dir, source).items() if (p / RUNTIME_FILE).exists()]
        raise model_source.ModelSourceError(
            f"{source.model_id} has no converted copy as {spec.name} in {target.parent}, and this process cannot "
            f"write there to convert it; copies present: {', '.join(present) or 'none'}. Prepare it where the cache "
            "is writable: python -m inference_svc.prepare with the same --model/--dtype/--weights/--activations "
            "(an image carries the formats its build args MODEL_DTYPE/MODEL_WEIGHTS/MODEL_ACTIVATIONS can pick)"
        )
    _convert(source, cache_dir, spec, target)
    return target, True


def _writable(directory: Path) -> bool:
    """Whether this process can create entries in ``directory``, or in its nearest existing parent."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return os.access(directory, os.W_OK | os.X_OK)


def _convert(source: model_source.ResolvedModel, cache_dir: Path, spec: RuntimeSpec, target: Path) -> None:
    start = time.perf_counter()
    hf = _hf_dir(source, cache_dir)
    config = json.loads((hf / "config.json").read_text())
    shape = ModelShape.from_config(config)  # refuse unsupported models before the expensive part
    check_tensors(_tensor_names(hf), shape)  # from the files' headers, before reading the weights
    tensors = build_runtime_tensors(_read_state(hf), shape, spec)
    with model_source.staged_dir(target, ".runtime-") as tmp:
        metadata = {"spec": spec.name, "source": source.model_id}
        if any(name.endswith(".q4") for name in tensors):  # torch's int4 layout differs between CPU kinds
            try:
                metadata[TORCH_INT4_BLOCK] = str(torch_int4_block())
            except NativeUnavailable:  # a layout Reprise cannot read: the copy serves only here
                pass
        save_file(tensors, str(tmp / RUNTIME_FILE), metadata=metadata)
        shutil.copy(hf / "config.json", tmp / "config.json")
        for name in _COPIED_FILES:
            if (hf / name).exists():
                shutil.copy(hf / name, tmp / name)
    log.info("converted %s to %s in %.1fs", source.model_id, spec.name, time.perf_counter() - start)
