"""The model engine: loads a causal LM with transformers on CPU and runs the tasks.

Every method here runs on the model worker thread only (see :mod:`.worker`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from inference_svc.core import model_source, prompts
from reprise.domain import Decoding, Finish, Label, Role, SentimentResult, Turn, Usage
from reprise.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model: str = model_source.DEFAULT_MODEL
    cache_dir: Path = Path(".models")
    #: "auto", "bf16" or "fp32".
    dtype: str = "auto"
    max_new_tokens: int = 128
    max_context_tokens: int = 4096


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed reply; the last one has ``finish`` and ``usage`` set."""

    delta: str
    finish: Finish | None = None
    usage: Usage | None = None
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


@dataclass(frozen=True)
class ModelDescription:
    model_id: str
    revision: str
    dtype: str
    cpus: tuple[int, ...]
    threads: int
    interop_threads: int
    max_context_tokens: int
    architecture: str


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


class Engine:
    """Owns tokenizer and model. Not thread-safe: call from the worker thread only."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = None
        self.model = None
        self.resolved: model_source.ResolvedModel | None = None
        self.dtype = _torch_dtype(config.dtype)
        self._label_ids: tuple[int, int] = (0, 0)
        self._eos_ids: set[int] = set()

    # -- loading -----------------------------------------------------------

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        self.resolved = source = model_source.resolve(self.config.model, self.config.cache_dir)
        dtype_name = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        location, gguf_file = source.location, source.gguf_file
        if gguf_file is not None:
            converted = model_source.converted_dir(self.config.cache_dir, source, dtype_name)
            if (converted / "config.json").exists():
                location, gguf_file = str(converted), None
        self.tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
        self.model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=self.dtype)
        if gguf_file is not None:
            log.info("converting %s once; later starts load the safetensors copy", gguf_file)
            model_source.save_converted(self.model, self.tokenizer, converted, source)
        self.model.eval()
        self._label_ids = tuple(self._first_token(w) for w in prompts.SENTIMENT_LABELS)  # type: ignore[assignment]
        if self._label_ids[0] == self._label_ids[1]:
            raise RuntimeError(f"label words {prompts.SENTIMENT_LABELS} share their first token")
        self._eos_ids = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")) if i is not None and i >= 0}
        log.info(
            "loaded %s (revision %s, %s) in %.1fs",
            source.model_id, source.revision, self.dtype, time.perf_counter() - start,
        )

    def warm_up(self) -> None:
        """One classify and a short chat, so the first real request pays no first-call costs."""
        self.classify("warm up")
        for _ in self.chat((), "hi", None, Decoding(max_new_tokens=2), threading.Event()):
            pass

    def describe(self) -> ModelDescription:
        assert self.resolved is not None and self.model is not None
        return ModelDescription(
            model_id=self.resolved.model_id,
            revision=self.resolved.revision,
            dtype=str(self.dtype).removeprefix("torch."),
            cpus=tuple(sorted(os.sched_getaffinity(0))),
            threads=torch.get_num_threads(),
            interop_threads=torch.get_num_interop_threads(),
            max_context_tokens=self.config.max_context_tokens,
            architecture=(self.model.config.architectures or ["?"])[0],
        )

    def _first_token(self, word: str) -> int:
        return self.tokenizer.encode(word, add_special_tokens=False)[0]

    # -- tasks ---------------------------------------------------------------

    def _encode_chat(self, messages: list[dict[str, str]]) -> torch.Tensor:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        if len(ids) > self.config.max_context_tokens:
            raise InvalidArgument("text", f"prompt is {len(ids)} tokens; the limit is {self.config.max_context_tokens}")
        return torch.tensor([ids], dtype=torch.long)

    @torch.inference_mode()
    def classify(self, text: str) -> tuple[SentimentResult, Usage]:
        ids = self._encode_chat(
            [{"role": "system", "content": prompts.SENTIMENT_SYSTEM_PROMPT}, {"role": "user", "content": text}]
        )
        logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        pair = torch.stack([logits[self._label_ids[0]], logits[self._label_ids[1]]]).float()
        p_pos = torch.softmax(pair, dim=0)[0].item()
        label = Label.POSITIVE if p_pos >= 0.5 else Label.NEGATIVE
        prob = p_pos if label is Label.POSITIVE else 1.0 - p_pos
        return SentimentResult(label, prob), Usage(prompt_tokens=ids.shape[1])

    @torch.inference_mode()
    def chat(
        self,
        history: tuple[Turn, ...],
        text: str,
        system_prompt: str | None,
        decoding: Decoding,
        cancelled: threading.Event,
    ) -> Iterator[ChatChunk]:
        from transformers import DynamicCache

        messages = [{"role": "system", "content": system_prompt or prompts.CHAT_SYSTEM_PROMPT}]
        messages += [{"role": "user" if t.role is Role.USER else "assistant", "content": t.content} for t in history]
        messages.append({"role": "user", "content": text})
        ids = self._encode_chat(messages)
        max_new = min(
            decoding.max_new_tokens or self.config.max_new_tokens, self.config.max_context_tokens - ids.shape[1]
        )
        generator = torch.Generator().manual_seed(decoding.seed) if decoding.seed is not None else None
        start = time.perf_counter()
        past = DynamicCache()
        logits = self.model(input_ids=ids, past_key_values=past, use_cache=True, logits_to_keep=1).logits[0, -1]
        prefill_ms = (time.perf_counter() - start) * 1000
        generated: list[int] = []
        emitted = ""
        finish = Finish.LENGTH
        while len(generated) < max_new and not cancelled.is_set():
            token = _pick(logits, decoding, generator)
            if token in self._eos_ids:
                finish = Finish.STOP
                break
            generated.append(token)
            text_so_far = self.tokenizer.decode(generated, skip_special_tokens=True)
            stop_at = _find_stop(text_so_far, decoding.stop)
            if stop_at is not None:
                text_so_far, finish = text_so_far[:stop_at], Finish.STOP
            # Hold back an incomplete UTF-8 sequence and a possible stop-string prefix.
            safe = len(text_so_far) if finish is Finish.STOP else _safe_length(text_so_far, decoding.stop)
            if safe > len(emitted):
                yield ChatChunk(delta=text_so_far[len(emitted):safe])
                emitted = text_so_far[:safe]
            if stop_at is not None:
                break
            logits = self.model(
                input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True
            ).logits[0, -1]
        if finish is Finish.LENGTH and len(generated) < max_new:
            finish = Finish.STOP  # cancelled: the consumer is gone, the value is never seen
        tail = self.tokenizer.decode(generated, skip_special_tokens=True)
        stop_at = _find_stop(tail, decoding.stop)
        tail = tail if stop_at is None else tail[:stop_at]
        yield ChatChunk(
            delta=tail[len(emitted):],
            finish=finish,
            usage=Usage(prompt_tokens=ids.shape[1], completion_tokens=len(generated)),
            prefill_ms=prefill_ms,
            decode_ms=(time.perf_counter() - start) * 1000 - prefill_ms,
        )


def _pick(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator | None) -> int:
    if decoding.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / decoding.temperature, dim=-1)
    if decoding.top_p is not None and decoding.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < decoding.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def _safe_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be sent: not a trailing replacement char, not a stop-string prefix."""
    end = len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end
