"""What the fast forward implements, read from a Hugging Face ``config.json``: served exactly, or refused.

The runtime (:mod:`.model`) is a Llama-style decoder. A config field it does not
implement would make it answer differently from transformers without a word, so
the check is an allow-list, not a list of known problems: every field of the
config (as transformers normalizes it for the model type) is either

- implemented (read into :class:`ModelShape`, with the values the forward supports),
- harmless (it cannot change what a causal LM computes at inference: ids, labels,
  dropout, the dtype the checkpoint was saved in, ...), or
- equal to the config class's own default (transformers' model runs the same code
  path as with the field absent);

anything else refuses the model at start, naming the field. The check runs on
``config.json`` alone, before any conversion or measurement.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")

#: Fields the forward reads (their values are checked in :meth:`ModelShape.from_config`).
IMPLEMENTED = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta", "attention_bias", "mlp_bias",
    "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
    # Llama's tensor-parallel split of its matmuls at pretraining: the same products, summed in another order.
    "pretraining_tp",
})

#: Fields that cannot change what the model computes at inference.
HARMLESS = frozenset({
    "model_type", "architectures", "transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype",
    "use_bfloat16",
    "bos_token_id", "eos_token_id", "pad_token_id", "id2label", "label2id", "problem_type", "tokenizer_class",
    "initializer_range", "attention_dropout", "use_cache", "output_attentions", "output_hidden_states", "return_dict",
    "chunk_size_feed_forward",
    # Sampling defaults some configs carry from older transformers: read by generate(), never by the forward.
    "max_length", "min_length", "do_sample", "temperature", "top_p", "top_k", "typical_p", "repetition_penalty",
    "num_beams", "num_return_sequences", "length_penalty", "no_repeat_ngram_size",
})

#: RoPE variants the forward implements (their frequencies; see :meth:`ModelShape.inv_freq`).
ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModel(ValueError):
    """The checkpoint uses something this runtime does not implement (the message names the config field)."""


def _normalized(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``raw`` as transformers reads it for its model type, and that config class's defaults."""
    model_type = raw.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(
            f"config field model_type={model_type!r} is not supported by the fast forward "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    from transformers import AutoConfig

    fields = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        cfg = AutoConfig.for_model(model_type, **fields).to_dict()
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsupportedModel(f"config.json does not load as {model_type}: {exc}") from exc
    return cfg, AutoConfig.for_model(model_type).to_dict()


def check_fields(cfg: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Refuse the first field that is neither implemented, harmless, nor at its default (see the module doc)."""
    for field in sorted(cfg):
        if field in IMPLEMENTED or field in HARMLESS:
            continue
        if field in defaults and cfg[field] == defaults[field]:
            continue
        raise UnsupportedModel(
            f"config field {field!r} = {cfg[field]!r} is not implemented by the fast forward "
            "(it would answer differently from transformers)"
        )


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding: the base and, for scaled variants, their parameters."""

    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    @classmethod
    def from_parameters(cls, params: dict[str, Any], fallback_theta: float) -> Rope:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise UnsupportedModel(f"config field 'rope_parameters' rope_type={kind!r} is not supported (supported: {ROPE_TYPES})")
        if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedModel("config field 'partial_rotary_factor' != 1 is not supported (RoPE on every dimension)")
        if float(params.get("attention_factor", 1.0) or 1.0) != 1.0:
            raise UnsupportedModel("config field 'attention_factor' != 1 is not supported")
        theta = float(params.get("rope_theta", fallback_theta))
        if kind == "default":
            return cls(theta)
        if kind == "linear":
            return cls(theta, kind, float(params["factor"]))
        return cls(
            theta, kind, float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )

    def inv_freq(self, head_dim: int) -> torch.Tensor:
        """The inverse frequencies (float64) of each dimension pair, as transformers' ``ROPE_INIT_FUNCTIONS`` compute them."""
        inv = 1.0 / (self.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        if self.kind == "linear":
            return inv / self.factor
        if self.kind == "llama3":  # transformers' _compute_llama3_parameters
            low_wavelen = self.original_max_positions / self.low_freq_factor
            high_wavelen = self.original_max_positions / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = torch.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (self.original_max_positions / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
            return torch.where(medium, smoothed, scaled)
        return inv


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    rope_theta: float
    max_positions: int
    #: Biases on q, k and v (Qwen2 always; Llama/Qwen3 with ``attention_bias``).
    attn_bias: bool
    tied: bool
    architecture: str
    #: A bias on the attention output projection (``attention_bias`` of Llama and Qwen3).
    o_bias: bool = False
    #: Biases on gate, up and down (Llama's ``mlp_bias``).
    mlp_bias: bool = False
    #: RMSNorm of each query and key head before RoPE (Qwen3).
    qk_norm: bool = False
    rope: Rope | None = None

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def inv_freq(self) -> torch.Tensor:
        return (self.rope or Rope(self.rope_theta)).inv_freq(self.head_dim)

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> ModelShape:
        """Read a Hugging Face ``config.json``; refuse, naming the field, what this runtime would compute wrongly."""
        cfg, defaults = _normalized(raw)
        check_fields(cfg, defaults)
        model_type = raw["model_type"]
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedModel(f"config field 'hidden_act' = {cfg.get('hidden_act')!r} is not supported (only silu)")
        heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
        max_positions = int(cfg.get("max_position_embeddings") or 4096)
        window = _attention_window(model_type, cfg)
        if window is not None and window < max_positions:
            # Within the window, sliding-window attention sees every earlier token: exact up to it, so serve that long.
            log.info("sliding-window attention (%d tokens): context limited to the window", window)
            max_positions = window
        rope_params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope = Rope.from_parameters(rope_params, float(cfg.get("rope_theta") or 10000.0))
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            vocab=cfg["vocab_size"],
            hidden=hidden,
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            intermediate=cfg["intermediate_size"],
            eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope.theta,
            max_positions=max_positions,
            attn_bias=model_type == "qwen2" or attention_bias,
            tied=bool(cfg.get("tie_word_embeddings", False)),
            architecture=(cfg.get("architectures") or raw.get("architectures") or ["?"])[0],
            o_bias=model_type in ("llama", "qwen3") and attention_bias,
            mlp_bias=model_type == "llama" and bool(cfg.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            rope=rope,
        )


def _attention_window(model_type: str, cfg: dict[str, Any]) -> int | None:
    """The sliding window of any layer that uses one, or None where every layer attends to the whole context."""
    kinds = set(cfg.get("layer_types") or ())
    unknown = kinds - {"full_attention", "sliding_attention"}
    if unknown:
        raise UnsupportedModel(f"config field 'layer_types' holds {sorted(unknown)}: not supported")
    sliding = "sliding_attention" in kinds or bool(cfg.get("use_sliding_window"))
    if model_type == "mistral":
        sliding = cfg.get("sliding_window") is not None
    if not sliding:
        return None
    window = cfg.get("sliding_window")
    if not window:
        raise UnsupportedModel("config field 'use_sliding_window' is set without a 'sliding_window' size")
    return int(window)
