"""The engine: tokenizer + runtime model + KV reuse, running the service's tasks.

- Sentiment is one forward pass per *batch*: every text continues the
  cached KV of the sentiment system prompt (and its few-shot examples), and
  only the label words' rows of the LM head are scored at each row's last
  token.
- Chat continues from the longest token prefix whose KV is in the
  :class:`~inference_svc.runtime.kv.PrefixIndex` (the default system prompt's KV
  is pinned there at start; every finished turn is added), prefills the rest in
  chunks, then decodes token by token, checking for cancellation each step.

Every method runs on the model worker thread only (see :mod:`.worker`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference_svc.core import generation, prompts, vision_prompt
from inference_svc.core.decoding import TextStream, pick_token, previous_ids, with_defaults
from inference_svc.core.observer import NullObserver, Observer
from inference_svc.core.request import ChatRequest
from inference_svc.core.scheduling import Step
from inference_svc.runtime import loader, model_source, placement, precision, vision
from inference_svc.runtime.architecture import UnsupportedModel
from inference_svc.runtime.kv import IndexStats, KVBuffer, PrefixIndex
from reprise.domain import Decoding, Finish, Label, SentimentResult, Usage
from reprise.errors import InvalidArgument, ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model: str = model_source.DEFAULT_MODEL
    cache_dir: Path = Path(".models")
    #: "auto", "bf16" or "fp32" (see :mod:`.precision`).
    dtype: str = "auto"
    #: "auto", "int4", "int8" or "dense".
    weights: str = "auto"
    dense_prefill: bool = True
    tie_embeddings: bool = True
    #: "auto" (Reprise's AVX512-BF16 kernel where it builds and runs) or "torch" (see :mod:`.native`).
    int4_kernel: str = "auto"
    #: "auto" (one-token steps through the fused C operations where they build) or "torch".
    decode_ops: str = "auto"
    #: "auto", "int8" or "fp32": activations of int4 layers under fp32 (see :func:`.precision.activations`).
    activations: str = "auto"
    max_new_tokens: int = 128
    max_context_tokens: int = 4096
    #: Byte budget of the chat prefix KV index (LRU beyond it).
    kv_cache_bytes: int = 512 * 1024 * 1024
    #: Prompt tokens per prefill forward pass (bounds memory; cancellation is checked between chunks).
    prefill_chunk: int = 512
    #: Tokens per classify forward pass (texts packed without padding); larger batches are split.
    max_batch_tokens: int = 4096
    sentiment: prompts.SentimentPrompt = field(default_factory=lambda: prompts.SENTIMENT)
    chat_system_prompt: str = prompts.CHAT_SYSTEM_PROMPT
    #: Serve a model the fast forward refuses through transformers' own (:mod:`.generic`) instead of refusing it.
    generic: bool = True

    def runtime_spec(self, chosen: precision.Precision, activations: str, tied: bool = True) -> loader.RuntimeSpec:
        """The converted format this config serves once its precision and activations are resolved.

        ``tied``: the model's config ties its LM head and embedding. Only then does one matrix serve
        both (unless ``tie_embeddings`` is off); an untied model always keeps its own embedding.
        """
        return loader.RuntimeSpec(chosen.dtype, chosen.weights, self.dense_prefill, self.tie_embeddings and tied, activations)


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed reply; the last one has ``finish`` and ``usage`` set."""

    delta: str
    finish: Finish | None = None
    usage: Usage | None = None
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


@dataclass(frozen=True)
class Classification:
    result: SentimentResult
    usage: Usage
    #: P(positive) before thresholding, for evaluation.
    p_positive: float


@dataclass(frozen=True)
class ModelDescription:
    model_id: str
    #: The weights' content revision and the serving format (:attr:`.loader.LoadedModel.revision`).
    revision: str
    dtype: str
    weights: str
    cpus: tuple[int, ...]
    threads: int
    interop_threads: int
    max_context_tokens: int
    architecture: str
    load_seconds: float
    weight_bytes: int
    decode_bytes: int
    kv: IndexStats
    memory_nodes: str = ""
    #: Digest of the built-in prompts (:func:`.prompts.revision`).
    prompts_revision: str = ""
    #: Kernel of the int4 decode rows (:attr:`.loader.LoadedModel.int4_kernel`).
    int4_kernel: str = ""
    #: Who runs a decode step's small operations (:attr:`.loader.LoadedModel.decode_ops`).
    decode_ops: str = ""


@dataclass(eq=False)
class _DecodeRow:
    """One stream's token waiting for its decode pass (a :class:`~.scheduling.BatchPart`)."""

    run: Callable[[Sequence[_DecodeRow]], None]
    token: int
    kv: KVBuffer
    logits: torch.Tensor | None = None

    def result(self) -> torch.Tensor:
        """The next token's logits; computed alone here when no worker batched the row (direct callers)."""
        if self.logits is None:
            self.run([self])
        assert self.logits is not None
        return self.logits


@dataclass
class _SentimentPrefix:
    kv: KVBuffer
    ids: list[int]
    suffix_ids: list[int]
    label_columns: list[list[int]]  # per label (positive, negative): columns of label_rows
    label_rows: torch.Tensor
    spec: prompts.SentimentPrompt


class Engine:
    """Owns tokenizer, model and KV caches. Not thread-safe: call from the worker thread only."""

    def __init__(self, config: EngineConfig, observer: Observer | None = None) -> None:
        self.config = config
        self._observer: Observer = observer or NullObserver()
        self.loaded: loader.LoadedModel | None = None
        self.index = PrefixIndex(config.kv_cache_bytes)
        self._sentiment: _SentimentPrefix | None = None
        self._eos: frozenset[int] = frozenset()
        #: What a request's unset decoding fields become: the model's generation config (:mod:`.generation`).
        self.decoding_defaults = Decoding()
        self.precision_reason = ""
        self._counter = None  # a tokenizer of its own for the event loop (see count_classify_tokens)

    # -- loading -----------------------------------------------------------

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        assert self.loaded is not None, "engine not loaded"
        return self.loaded.tokenizer

    @property
    def model(self):  # type: ignore[no-untyped-def]
        assert self.loaded is not None, "engine not loaded"
        return self.loaded.model

    def load(self) -> None:
        cfg = self.config
        precision.check_activations(cfg.activations)  # before anything is read
        source = model_source.resolve(cfg.model, cfg.cache_dir)
        try:
            shape = loader.check_source(source, cfg.cache_dir)  # before any format is chosen
        except UnsupportedModel as exc:
            if not cfg.generic:
                raise
            log.warning("the fast forward does not implement this model (%s): trying transformers' own", exc)
            self.loaded = loader.load_generic(source, cfg.cache_dir, cfg.max_context_tokens)
            self._ready_tokens()
            return
        chosen = precision.choose(cfg.dtype, cfg.weights, lambda: loader.fp32_int4(cfg.cache_dir, cfg.int4_kernel))
        activations = precision.activations(cfg.activations, chosen)
        self.precision_reason = chosen.reason
        log.info("precision: %s, %s weights, %s activations (%s)", chosen.dtype, chosen.weights.value, activations, chosen.reason)
        spec = cfg.runtime_spec(chosen, activations, shape.tied)
        self.loaded = loader.load(
            source, self.config.cache_dir, spec, self.config.max_context_tokens, self.config.int4_kernel,
            self.config.decode_ops,
        )
        self._ready_tokens()

    def _ready_tokens(self) -> None:
        """End-of-turn tokens and the sentiment prefix, once a model is loaded (either path)."""
        assert self.loaded is not None
        tok = self.loaded.tokenizer
        directory = Path(tok.name_or_path)  # both load paths read the tokenizer from the model's (converted) directory
        fallback = model_source.generation_fallback(self.loaded.source)
        self._eos = generation.end_of_turn_ids(tok, directory, self.model.shape.vocab, fallback)
        self.decoding_defaults = generation.read_defaults(directory, fallback)
        log.info("end-of-turn tokens %s; decoding defaults %s", sorted(self._eos), generation.describe(self.decoding_defaults))
        self._sentiment = self._build_sentiment_prefix(self.config.sentiment)
        # Admission prices requests on the event loop while the worker tokenizes: a fast tokenizer
        # shared by two threads can fail ("Already borrowed"), so the loop gets a copy.
        self._counter = copy.deepcopy(tok)

    def warm_up(self) -> None:
        """Pin the default chat system prompt's KV and run every code path once (first calls are slow)."""
        ids = self._template([{"role": "system", "content": self.config.chat_system_prompt}], generation=False)
        kv = self.model.new_kv(len(ids))
        self.model.forward(torch.tensor(ids), kv)
        self.index.insert(ids, kv, pinned=True)
        self.classify_batch(["warm up", "a slightly longer warm-up sentence to pad the batch"])
        for _ in self.chat(ChatRequest("hi", decoding=Decoding(max_new_tokens=2)), threading.Event(), remember=False):
            pass
        self._publish_kv_stats()

    def describe(self) -> ModelDescription:
        assert self.loaded is not None
        where = placement.current()
        return ModelDescription(
            model_id=self.loaded.source.model_id,
            revision=self.loaded.revision,
            dtype=str(self.model.dtype).removeprefix("torch."),
            weights=self.loaded.spec.weights.value,
            cpus=where.cpus,
            threads=where.threads,
            interop_threads=where.interop_threads,
            max_context_tokens=self.model.max_context,
            architecture=self.model.shape.architecture,
            load_seconds=self.loaded.load_seconds,
            weight_bytes=self.loaded.weight_bytes,
            decode_bytes=self.loaded.decode_bytes,
            kv=self.index.stats(),
            memory_nodes=where.mems,
            prompts_revision=prompts.revision(
                self._sentiment.spec if self._sentiment is not None else self.config.sentiment,
                self.config.chat_system_prompt,
                generation.describe(self.decoding_defaults),
            ),
            int4_kernel=self.loaded.int4_kernel,
            decode_ops=self.loaded.decode_ops,
        )

    # -- prompts -------------------------------------------------------------

    def _template(self, messages: list[dict[str, str]], generation: bool) -> list[int]:
        # Contents as plain text: a control token a caller types is not obeyed (prompts.template_ids).
        return prompts.template_ids(self.tokenizer, messages, generation)[0]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _build_sentiment_prefix(self, spec: prompts.SentimentPrompt) -> _SentimentPrefix:
        messages = [{"role": "system", "content": spec.system}]
        for text, label in spec.examples:
            messages += [{"role": "user", "content": spec.user(text)}, {"role": "assistant", "content": spec.answer(label)}]
        sentinel = "\u2063REPRISE-TEXT\u2063"
        rendered = self.tokenizer.apply_chat_template(
            [*messages, {"role": "user", "content": spec.user(sentinel)}], add_generation_prompt=True, tokenize=False
        )
        before, after = rendered.split(sentinel)
        ids, suffix = self._encode(before), self._encode(after)
        if len(ids) + len(suffix) >= self.model.max_context:
            raise ValueError(f"the sentiment prompt is {len(ids)} tokens: --max-context-tokens must be larger")
        kv = self.model.new_kv(len(ids))
        self.model.forward(torch.tensor(ids), kv)  # computed once; every classify reads it by reference
        columns: list[list[int]] = []
        flat: list[int] = []
        for label in (Label.POSITIVE, Label.NEGATIVE):
            firsts = sorted({self._encode(w)[0] for w in spec.label_words[label]})
            columns.append(list(range(len(flat), len(flat) + len(firsts))))
            flat += firsts
        if set(flat[i] for i in columns[0]) & set(flat[i] for i in columns[1]):
            raise RuntimeError("sentiment label words share a first token")
        # fp32: a bf16 logit near 20 moves in steps of 0.125, so the label margin of many texts rounded to
        # exactly 0 and flipped with the batch a text happened to share (docs/inference.md).
        rows = self.model.head.rows(torch.tensor(flat)).float()
        log.info("sentiment prefix: %d tokens cached, label tokens %s", len(ids), flat)
        return _SentimentPrefix(kv, ids, suffix, columns, rows, spec)

    # -- pricing (event loop side, own tokenizer copy) ----------------------------

    def count_classify_tokens(self, text: str) -> int:
        """Tokens a classify of ``text`` prefills (its row after the cached sentiment prefix)."""
        assert self._counter is not None and self._sentiment is not None, "engine not loaded"
        return len(prompts.encode_plain(self._counter, text)) + len(self._sentiment.suffix_ids)

    @property
    def classify_token_limit(self) -> int:
        """The most tokens a classify row may have (the context left after the sentiment prefix)."""
        assert self._sentiment is not None, "engine not loaded"
        return self.model.max_context - len(self._sentiment.ids)

    def count_chat_tokens(self, request: ChatRequest) -> int:
        """Tokens of the whole chat prompt: its text's and its pictures' (:attr:`.vision.Pictures.prompt_tokens`).

        An upper bound of its prefill (a cached prefix is not run).
        """
        assert self._counter is not None, "engine not loaded"
        text = len(prompts.chat_prompt(self._counter, request, self.config.chat_system_prompt).ids)
        return text + (request.pictures.prompt_tokens if request.pictures is not None else 0)

    def set_sentiment_prompt(self, spec: prompts.SentimentPrompt) -> None:
        """Replace the sentiment prompt (recomputes its cached KV); used by prompt tuning."""
        self._sentiment = self._build_sentiment_prefix(spec)

    def _chat_prompt(self, request: ChatRequest) -> prompts.ChatPrompt:
        # A request's images reach the prompt only as its pictures (the service prepares them off the model thread).
        assert request.pictures is not None or not request.images, "ChatRequest.with_pictures comes before the engine"
        if request.pictures is not None:
            return vision_prompt.chat_prompt(self.tokenizer, request, self.config.chat_system_prompt, self.model.image_token_id)
        return prompts.chat_prompt(self.tokenizer, request, self.config.chat_system_prompt)

    # -- sentiment -------------------------------------------------------------

    def classify_batch(self, texts: Sequence[str]) -> list[Classification | ServiceError]:
        """Classify ``texts`` in as few forward passes as fit ``max_batch_tokens``; duplicates run once."""
        prefix = self._sentiment
        assert prefix is not None
        unique = list(dict.fromkeys(texts))
        outcome: dict[str, Classification | ServiceError] = {}
        rows: dict[str, list[int]] = {}
        limit = self.model.max_context - len(prefix.ids)
        for text in unique:
            row = prompts.encode_plain(self.tokenizer, text) + prefix.suffix_ids  # the caller's text: plain text
            if len(row) > limit:
                outcome[text] = InvalidArgument("text", f"is {len(row)} tokens; the limit is {limit}")
            else:
                rows[text] = row
        # Long rows go one by one through chunked prefill (bounded memory per pass).
        long = {t for t in rows if len(rows[t]) > self.config.prefill_chunk}
        order = sorted((t for t in rows if t not in long), key=lambda t: len(rows[t]))
        batches: list[list[str]] = []
        tokens = 0
        for text in order:  # packed without padding: each batch within the token budget
            if batches and tokens + len(rows[text]) <= self.config.max_batch_tokens:
                batches[-1].append(text)
                tokens += len(rows[text])
            else:
                batches.append([text])
                tokens = len(rows[text])
        batches += [[t] for t in long]
        for batch in batches:
            if batch[0] in long:
                logits = self._score_long(prefix, rows[batch[0]])
            else:
                logits = self.model.score_batch(prefix.kv, len(prefix.ids), [rows[t] for t in batch], prefix.label_rows)
            pos = torch.logsumexp(logits[:, prefix.label_columns[0]], dim=-1)
            neg = torch.logsumexp(logits[:, prefix.label_columns[1]], dim=-1)
            bias = torch.tensor([prefix.spec.bias_for(t) for t in batch])
            p_pos = torch.sigmoid(pos - neg - bias).tolist()
            self._observer.classify_pass(len(batch))
            for text, p in zip(batch, p_pos):
                label = Label.POSITIVE if p >= 0.5 else Label.NEGATIVE
                prob = p if label is Label.POSITIVE else 1.0 - p
                n = len(rows[text])
                usage = Usage(prompt_tokens=len(prefix.ids) + n, cached_tokens=len(prefix.ids))
                outcome[text] = Classification(SentimentResult(label, prob), usage, p)
                self._observer.prompt(usage.prompt_tokens, usage.cached_tokens)
        return [outcome[t] for t in texts]

    def _score_long(self, prefix: _SentimentPrefix, row: list[int]) -> torch.Tensor:
        """Label logits ``[1, labels]`` for one long row: copy the prefix KV, prefill in chunks."""
        steps = self._score_long_steps(prefix, row, threading.Event())
        return [s.item for s in steps][-1]

    def _chunk(self, chunk_tokens: Callable[[], int] | None) -> int:
        return max(1, chunk_tokens()) if chunk_tokens is not None else self.config.prefill_chunk

    def _score_long_steps(
        self,
        prefix: _SentimentPrefix,
        row: list[int],
        cancelled: threading.Event,
        chunk_tokens: Callable[[], int] | None = None,
    ) -> Iterator[Step]:
        """:meth:`_score_long` one prefill chunk per step; the last step's item is the logits."""
        with torch.inference_mode():
            kv = self.model.new_kv(len(prefix.ids) + len(row))
            kv.copy_prefix(prefix.kv, len(prefix.ids))
        at = 0
        while at < len(row):
            if cancelled.is_set():
                return
            chunk = row[at : at + self._chunk(chunk_tokens)]
            at += len(chunk)
            # inference_mode only around the work: a generator suspended inside the context would
            # leave it on for whatever the worker thread runs between two steps.
            with torch.inference_mode():
                hidden = self.model.forward(torch.tensor(chunk), kv)
            if at < len(row):
                yield Step(prefill_tokens=len(chunk))
        with torch.inference_mode():
            yield Step(prefill_tokens=len(chunk), item=hidden.float() @ prefix.label_rows.t())

    def classify_steps(
        self, text: str, cancelled: threading.Event, chunk_tokens: Callable[[], int] | None = None
    ) -> Iterator[Step]:
        """Classify one (long) text a prefill chunk per step, so the worker can run other work between chunks.

        ``chunk_tokens()`` sizes each chunk when it starts (default: ``prefill_chunk``). The last
        step's item is the :class:`Classification`; a too-long text raises InvalidArgument.
        """
        prefix = self._sentiment
        assert prefix is not None
        row = prompts.encode_plain(self.tokenizer, text) + prefix.suffix_ids
        limit = self.model.max_context - len(prefix.ids)
        if len(row) > limit:
            raise InvalidArgument("text", f"is {len(row)} tokens; the limit is {limit}")
        logits = None
        for step in self._score_long_steps(prefix, row, cancelled, chunk_tokens):
            if step.item is None:
                yield step
            else:
                logits = step.item
                last = step
        if logits is None:
            return  # cancelled
        pos = torch.logsumexp(logits[:, prefix.label_columns[0]], dim=-1)
        neg = torch.logsumexp(logits[:, prefix.label_columns[1]], dim=-1)
        p = float(torch.sigmoid(pos - neg - prefix.spec.bias_for(text))[0])
        label = Label.POSITIVE if p >= 0.5 else Label.NEGATIVE
        usage = Usage(prompt_tokens=len(prefix.ids) + len(row), cached_tokens=len(prefix.ids))
        self._observer.classify_pass(1)
        self._observer.prompt(usage.prompt_tokens, usage.cached_tokens)
        result = Classification(SentimentResult(label, p if label is Label.POSITIVE else 1.0 - p), usage, p)
        yield Step(prefill_tokens=last.prefill_tokens, item=result)

    # -- chat ------------------------------------------------------------------

    def chat(self, request: ChatRequest, cancelled: threading.Event, *, remember: bool = True) -> Iterator[ChatChunk]:
        """Stream one reply. Reuses the longest cached KV prefix; stores the turn's KV when done."""
        steps = self.chat_steps(request, cancelled, remember=remember)
        try:
            for step in steps:
                if step.item is not None:
                    yield step.item
        finally:
            steps.close()  # the KV is stored in chat_steps' cleanup, also when our consumer stops early

    @torch.inference_mode()
    def chat_steps(
        self,
        request: ChatRequest,
        cancelled: threading.Event,
        *,
        remember: bool = True,
        chunk_tokens: Callable[[], int] | None = None,
    ) -> Iterator[Step]:
        """:meth:`chat` as worker steps: one per prefill chunk, one per decode token; items are ChatChunks.

        The worker runs other requests between steps, so a long prompt is prefilled
        in chunks between the decode steps of other replies and classify batches.
        ``chunk_tokens()`` sizes each chunk when it starts (default: ``prefill_chunk``).
        ``request.pictures``: the new message's pictures (vision-language models only, :mod:`.vision`).
        """
        decoding = with_defaults(request.decoding, self.decoding_defaults)
        prompt = self._chat_prompt(request)
        ids = prompt.ids
        limit = self.model.max_context
        if len(ids) >= limit:
            raise prompt.too_long(limit)  # names the field to shorten: text, history or system_prompt
        max_new = min(decoding.max_new_tokens or self.config.max_new_tokens, limit - len(ids))
        start = time.perf_counter()
        match = self.index.lookup(ids)
        reused = min(match.length, len(ids) - 1)  # the last prompt token is always run: its logits start the reply
        kv = self.model.new_kv(len(ids) + max_new)
        if reused and match.kv is not None:
            kv.copy_prefix(match.kv, reused)
        if request.pictures is not None:
            vision.attach(kv, prompt.ids, request.pictures, self.model)  # type: ignore[arg-type]  # M-RoPE positions and image rows
        self._observer.prefix_lookup(hit=reused > 0)
        hidden = None
        chunk = 0
        at = reused
        while at < len(ids):
            if cancelled.is_set():
                return
            if chunk:
                yield Step(prefill_tokens=chunk)
            chunk = len(ids[at : at + self._chunk(chunk_tokens)])
            hidden = self.model.forward(torch.tensor(ids[at : at + chunk]), kv)
            at += chunk
        logits = self.model.logits(hidden)[0]
        prefill_ms = (time.perf_counter() - start) * 1000
        self._observer.first_token(prefill_ms / 1000)
        self._observer.prompt(len(ids), reused)
        generator = torch.Generator().manual_seed(decoding.seed) if decoding.seed is not None else None
        stream = TextStream(lambda toks: self.tokenizer.decode(toks, skip_special_tokens=True), decoding.stop)
        seq = list(ids)
        previous = previous_ids(seq, self._eos) if decoding.repetition_penalty not in (None, 1.0) else None
        generated, finish = 0, Finish.LENGTH
        row: _DecodeRow | None = None
        try:
            while generated < max_new and not cancelled.is_set():
                token = pick_token(logits, decoding, generator, previous)
                if token in self._eos:
                    finish = Finish.STOP
                    break
                generated += 1
                delta = stream.push(token)
                # No pass when the next token's logits would never be read.
                row = None if stream.stopped or generated == max_new else _DecodeRow(self._decode_rows, token, kv)
                # The step that ends the prefill (its last chunk) prices prefill; later ones one decode token.
                # With a row, the worker runs this token's forward in one pass with the other streams' rows.
                item = ChatChunk(delta) if delta else None
                yield Step(prefill_tokens=chunk, decode_tokens=0 if chunk else 1, item=item, batch=row)
                chunk = 0
                if stream.stopped:
                    finish = Finish.STOP
                    break
                if row is None:
                    break
                logits = row.result()
                seq.append(token)
                row = None
                if previous is not None:  # a repeat is harmless: each id is penalized once
                    previous = torch.cat([previous, torch.tensor([token])])
        finally:
            if row is not None and row.logits is not None:
                seq.append(row.token)  # closed after its pass ran: the KV holds the token
            if remember and request.pictures is None:  # every picture's tokens share one id: ids cannot key its KV
                self.index.insert(seq, kv)
                self._publish_kv_stats()
            self._observer.generated(generated)
        decode_ms = (time.perf_counter() - start) * 1000 - prefill_ms
        if generated > 1 and decode_ms > 0:
            self._observer.decode_speed((generated - 1) / (decode_ms / 1000))
        yield Step(
            prefill_tokens=chunk,
            item=ChatChunk(
                stream.finish(),
                finish=finish,
                usage=Usage(prompt_tokens=len(ids), cached_tokens=reused, completion_tokens=generated),
                prefill_ms=prefill_ms,
                decode_ms=decode_ms,
            ),
        )

    def _decode_rows(self, rows: Sequence[_DecodeRow]) -> None:
        """One decode pass for several streams (the worker batches them, :mod:`.worker`): a row per stream.

        The fast forward takes all rows in one pass (:meth:`.model.Transformer.decode_batch`);
        transformers' generic path has no batched decode and runs them one at a time.
        """
        with torch.inference_mode():
            batch = getattr(self.model, "decode_batch", None)
            if batch is None or len(rows) == 1:
                for row in rows:
                    row.logits = self.model.logits(self.model.forward(torch.tensor([row.token]), row.kv))[0]
                return
            logits = self.model.logits(batch([r.token for r in rows], [r.kv for r in rows]), rows_alone=True)
            for row, out in zip(rows, logits):
                row.logits = out

    def _publish_kv_stats(self) -> None:
        stats = self.index.stats()
        self._observer.kv_index(stats.entries, stats.bytes)

