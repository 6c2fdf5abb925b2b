"""The exact key: SHA-256 over a canonical encoding of everything that decides the answer.

The encoding is JSON with sorted keys and no insignificant whitespace, so it
is stable across Python versions and readable when debugging. Text (and
history) is normalized first (see :mod:`.normalize`); the system prompt is
kept verbatim. For greedy decoding, sampling-only parameters (top_p, top_k,
min_p, seed) are dropped: they cannot change a greedy answer. A set parameter
is keyed even at its "off" value (top_p 1, repetition_penalty 1): unset means
the model's default (its generation config), which may be something else.
"""

from __future__ import annotations

import hashlib
import json

from cache_svc.core.normalize import Normalization
from cache_svc.core.types import CacheQuery
from reprise.domain import Decoding
# The image caps and decoder are shared with the gateway and inference (they refuse the same files).
from reprise.images import IMAGE_LIMITS, ImageLimits, check_images, image_digest  # noqa: F401  (re-exported)

KEY_VERSION = 1


def canonical_decoding(d: Decoding) -> dict[str, object]:
    out: dict[str, object] = {}
    if d.max_new_tokens is not None:
        out["max_new_tokens"] = d.max_new_tokens
    if d.stop:
        out["stop"] = list(d.stop)
    if d.repetition_penalty is not None:  # changes greedy answers too
        out["repetition_penalty"] = round(float(d.repetition_penalty), 6)
    if not d.greedy:
        out["temperature"] = round(float(d.temperature or 0.0), 6)
        if d.top_p is not None:
            out["top_p"] = round(float(d.top_p), 6)
        if d.top_k is not None:
            out["top_k"] = d.top_k
        if d.min_p is not None:
            out["min_p"] = round(float(d.min_p), 6)
        if d.seed is not None:
            out["seed"] = d.seed
    return out


def _context(query: CacheQuery, normalize: Normalization) -> dict[str, object]:
    """Every part of the key except the request text."""
    return {
        "v": KEY_VERSION,
        "namespace": query.namespace,
        "model": [query.model_id, query.model_revision],
        "task": query.task,
        "decoding": canonical_decoding(query.decoding),
        "system": query.system_prompt,
        "history": [[t.role.value, normalize(t.content)] for t in query.history],
        "images": list(query.image_digests),
    }


def _dump(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def canonical_encoding(query: CacheQuery, normalize: Normalization) -> bytes:
    """The bytes the exact key hashes: sorted-key JSON of the context plus the normalized text."""
    return _dump({**_context(query, normalize), "text": normalize(query.text)})


def exact_key(query: CacheQuery, normalize: Normalization) -> str:
    """Hex SHA-256 of :func:`canonical_encoding`."""
    return hashlib.sha256(canonical_encoding(query, normalize)).hexdigest()


def partition_key(query: CacheQuery, normalize: Normalization) -> str:
    """Hex SHA-256 of everything but the text.

    A semantic candidate is only considered when it shares the query's
    partition: same namespace, model and revision, task, decoding, system
    prompt, history and images. Only the wording of the text may differ.
    """
    return hashlib.sha256(_dump({**_context(query, normalize), "part": 1})).hexdigest()


def vector_id(key: str) -> int:
    """The FAISS id of an entry: the key's first 63 bits, the same on every replica."""
    return int(key[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF
