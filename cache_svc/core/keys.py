"""The exact key: SHA-256 over a canonical encoding of everything that decides the answer.

The encoding is JSON with sorted keys and no insignificant whitespace, so it
is stable across Python versions and readable when debugging. Text (and
history) is normalized first (see :mod:`.normalize`); the system prompt is
kept verbatim. For greedy decoding, sampling-only parameters (top_p, seed)
are dropped: they cannot change a greedy answer.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cache_svc.core.normalize import Normalization
from cache_svc.core.types import CacheQuery
from reprise.domain import Decoding
from reprise.errors import InvalidArgument

KEY_VERSION = 1


def canonical_decoding(d: Decoding) -> dict[str, object]:
    out: dict[str, object] = {}
    if d.max_new_tokens is not None:
        out["max_new_tokens"] = d.max_new_tokens
    if d.stop:
        out["stop"] = list(d.stop)
    if not d.greedy:
        out["temperature"] = round(float(d.temperature or 0.0), 6)
        if d.top_p is not None and d.top_p < 1.0:
            out["top_p"] = round(float(d.top_p), 6)
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


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost before it is decoded.

    A 15 KB PNG can declare 11000x11000 pixels: decoding it takes seconds and
    350 MB. The declared size is in the header, which is read without
    decoding, so such a file is refused in microseconds.
    """

    #: Pixels (width x height) one image may declare; 16.8 M is a 4096x4096 picture.
    max_pixels: int = 4096 * 4096
    #: Bytes of one encoded image.
    max_bytes: int = 8 * 1024 * 1024
    #: Images in one query.
    max_images: int = 8


IMAGE_LIMITS = ImageLimits()


def check_images(images: Sequence[bytes], field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> None:
    """The cheap checks (count and bytes) that need no decoding at all."""
    if len(images) > limits.max_images:
        raise InvalidArgument(field, f"has {len(images)} images; the limit is {limits.max_images}")
    for i, data in enumerate(images):
        if len(data) > limits.max_bytes:
            raise InvalidArgument(f"{field}[{i}]", f"is {len(data)} bytes; the limit is {limits.max_bytes}")


def image_digest(data: bytes, field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> str:
    """SHA-256 of an image's pixels after EXIF orientation, as RGB.

    The file's container, compression and metadata do not matter: a PNG saved
    at another compression level, or a photo whose EXIF says "rotate 90°"
    versus the same photo stored already rotated, give the same digest.

    Refuses (INVALID_ARGUMENT) by byte size and by the pixel count the header
    declares, before any pixel is decoded. Decoding is CPU work of up to a
    few hundred milliseconds: async callers run this in a thread.
    """
    from PIL import Image, ImageOps

    if len(data) > limits.max_bytes:
        raise InvalidArgument(field, f"is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            if width * height > limits.max_pixels:
                raise InvalidArgument(
                    field, f"declares {width}x{height} pixels ({width * height}); the limit is {limits.max_pixels}"
                )
            img = ImageOps.exif_transpose(img).convert("RGB")
            pixels = img.tobytes()
            size = img.size
    except InvalidArgument:
        raise
    except Image.DecompressionBombError:  # PIL's own cap (2x Image.MAX_IMAGE_PIXELS), checked as it opens
        raise InvalidArgument(field, f"declares more pixels than the limit of {limits.max_pixels}") from None
    except Exception as exc:  # a corrupt or hostile file: PIL raises OSError, ValueError, SyntaxError, struct.error...
        raise InvalidArgument(field, f"not a decodable image ({exc.__class__.__name__})") from None
    h = hashlib.sha256(f"RGB:{size[0]}x{size[1]}:".encode())
    h.update(pixels)
    return h.hexdigest()
