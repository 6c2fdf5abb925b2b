"""The generic path: any other causal LM, served through transformers' own model (correct, slower).

A model the fast forward refuses (:mod:`.architecture`: another ``model_type``, an
unimplemented config field) is served here, in fp32, with the same interface the
engine uses for the fast :class:`~.model.Transformer`: ``forward`` appends tokens to a
per-sequence KV and returns the last position's final hidden state, ``logits`` applies
the LM head, ``score_batch`` scores label rows after a shared prefix. So chat, prefix
KV reuse (the :class:`~.kv.PrefixIndex` holds :class:`GenericKV`) and classify work as
on the fast path, at transformers' speed.

Correct or refused: the checkpoint must load with no missing or unexpected tensors, and
the model's logits must be its LM head applied to the last hidden state (what label
scoring reads); a model that softcaps or rescales its logits, or whose head has a bias,
is refused at start. Models with sliding-window layers reuse no KV (their caches keep
only the window, so a prefix cannot be cut out of them): a reused prefix is recomputed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference_svc.runtime import model_source
from inference_svc.runtime.architecture import UnsupportedModel

log = logging.getLogger(__name__)

#: ``LoadedModel.decode_ops`` (and ModelInfo's) for a model served here.
RUNTIME = "transformers"


class GenericKV:
    """One sequence's KV on the generic path: transformers' cache and the tokens it holds."""

    def __init__(self, model: GenericModel) -> None:
        self.model = model
        self.cache: Any = None
        self.ids: list[int] = []

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        if self.cache is None:
            return 0
        tensors = (getattr(layer, name, None) for layer in self.cache.layers for name in ("keys", "values"))
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def compact(self) -> GenericKV:
        return self

    def copy_prefix(self, source: GenericKV, n: int) -> None:
        """Make this KV hold the first ``n`` tokens of ``source``: its cache cut to ``n``, or recomputed."""
        if n > source.length:
            raise ValueError(f"the source KV holds {source.length} tokens, {n} asked for")
        self.cache, self.ids = None, []
        if n == 0:
            return
        if self.model.croppable:
            cache = copy.deepcopy(source.cache)
            if n < source.length:
                cache.crop(n - source.length)  # transformers' crop takes the number of tokens to drop, negated
            self.cache, self.ids = cache, list(source.ids[:n])
        else:
            self.model.forward(torch.tensor(source.ids[:n]), self)


@dataclass(frozen=True)
class GenericShape:
    """What the engine reads of a model's shape."""

    vocab: int
    architecture: str
    layers: int


class _Head:
    """The LM head's rows, for the sentiment label rows (``Linear.rows`` on the fast path)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def rows(self, index: torch.Tensor | list[int]) -> torch.Tensor:
        return self.weight[index]


class GenericModel:
    """transformers' model behind the fast :class:`~.model.Transformer`'s interface (fp32, worker thread only)."""

    dtype = torch.float32

    def __init__(self, hf: Any, max_context: int) -> None:
        self.hf = hf
        self.decoder = hf.get_decoder()
        lm_head = hf.get_output_embeddings()
        if getattr(lm_head, "bias", None) is not None:
            raise UnsupportedModel("the generic path scores label rows without a bias: this LM head has one")
        config = hf.config.get_text_config()
        self.head = _Head(lm_head.weight.detach())
        architecture = (hf.config.architectures or [type(hf).__name__])[0]
        self.shape = GenericShape(config.vocab_size, architecture, config.num_hidden_layers)
        self.max_context = max_context
        # A sliding-window layer's cache keeps only the window (and other kinds of layer keep other state):
        # no prefix can be cut out of those, so a reused prefix is recomputed instead.
        kinds = set(getattr(config, "layer_types", None) or ())
        sliding = bool(kinds - {"full_attention"}) or (not kinds and bool(getattr(config, "sliding_window", None)))
        self.croppable = not sliding

    def new_kv(self, capacity: int) -> GenericKV:
        return GenericKV(self)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, kv: GenericKV) -> torch.Tensor:
        """Append ``ids`` (1-D) to ``kv``; the last position's final (normed) hidden state ``[1, hidden]``."""
        start = kv.length
        return self._decode(ids, kv, input_ids=ids[None], position_ids=torch.arange(start, start + ids.numel())[None])

    def _decode(self, ids: torch.Tensor, kv: GenericKV, **inputs: torch.Tensor) -> torch.Tensor:
        """Run the decoder on ``inputs`` (ids or embeddings, and positions) for ``ids``, appending them to ``kv``."""
        if kv.length + ids.numel() > self.max_context:
            raise ValueError(f"the context holds {self.max_context} tokens; {kv.length + ids.numel()} needed")
        if kv.cache is None:
            from transformers import DynamicCache

            kv.cache = DynamicCache(config=self.hf.config)
        out = self.decoder(**inputs, past_key_values=kv.cache, use_cache=True)
        kv.cache = out.past_key_values
        kv.ids += ids.tolist()
        return out.last_hidden_state[0, -1:].float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden.float() @ self.head.weight.t().float())

    @torch.inference_mode()
    def score_batch(self, prefix: GenericKV, prefix_len: int, rows: list[list[int]], label_rows: torch.Tensor) -> torch.Tensor:
        """Label-row logits at the last token of each row, each continuing ``prefix[:prefix_len]`` (one row at a time)."""
        out = []
        for row in rows:
            kv = self.new_kv(0)
            kv.copy_prefix(prefix, prefix_len)
            out.append(self.forward(torch.tensor(row), kv) @ label_rows.t().float())
        return torch.cat(out)

    @torch.inference_mode()
    def check_head(self) -> None:
        """Refuse a model whose logits are not its LM head applied to the last hidden state (softcapping, scaling)."""
        ids = torch.arange(min(8, self.shape.vocab))[None]
        expected = self.hf(input_ids=ids).logits[0, -1].float()
        ours = self.logits(self.forward(ids[0], self.new_kv(0)))[0]
        if not torch.allclose(ours, expected, rtol=1e-4, atol=1e-4 * max(1.0, expected.abs().max().item())):
            raise UnsupportedModel(
                f"{self.shape.architecture}'s logits are not its LM head of the last hidden state (softcapped or "
                "scaled): the generic path cannot score label rows for it"
            )


def load(directory: Path, max_context: int) -> tuple[Any, GenericModel, int]:
    """The tokenizer, the model and its weight bytes of a causal LM's Hugging Face directory (refusing what would load wrong).

    A vision-language directory is :func:`.vision.load`'s instead (the loader picks, :func:`.loader.load_generic`).
    """
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    try:
        hf, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        raise UnsupportedModel(f"transformers cannot load {directory} as a causal LM: {exc}") from exc
    return serve(directory, hf, info, max_context, GenericModel, start)


def serve(
    directory: Path,
    hf: Any,
    info: dict[str, Any],
    max_context: int,
    build: Callable[[Any, int], GenericModel],
    start: float,
) -> tuple[Any, GenericModel, int]:
    """Check what transformers loaded from ``directory`` (``info``: its loading report) and serve it as ``build(hf, context)``.

    Returns the tokenizer, the model and its weight bytes, as :func:`load`; ``start``: when loading began (logged).
    """
    from transformers import AutoTokenizer

    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(sorted(map(str, v))[:5])}" for k, v in problems.items())
        raise model_source.ModelSourceError(f"the checkpoint does not match its config ({detail})")
    hf.eval()
    # A VL model's config nests its language model's (which holds the context length).
    config_max = getattr(hf.config.get_text_config(), "max_position_embeddings", None) or max_context
    context = min(max_context, int(config_max))
    model = build(hf, context)
    model.check_head()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    log.info("loaded %s through transformers in %.1fs", directory, time.perf_counter() - start)
    return tokenizer, model, weight_bytes
