"""64-bit SimHash of a text, stored with every entry for cheap near-duplicate checks.

Features are word tokens: Latin words and digit runs as they are, and Chinese
(any CJK run) as overlapping character bigrams. Single characters as features
make every Chinese sentence look alike; bigrams behave like words. The
benchmark (``bench/cache``) measures the Hamming distances of the labelled
paraphrase and unrelated pairs; see docs/cache.md for the calibrated numbers.
"""

from __future__ import annotations

import hashlib
import re

_TOKEN = re.compile(r"[0-9]+(?:[.,][0-9]+)*|[^\W\d_]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")


def features(text: str) -> list[str]:
    """Word tokens of ``text`` (already normalized): Latin words, numbers, CJK bigrams."""
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        for part in re.split(r"([\u3400-\u9fff\uf900-\ufaff]+)", tok):
            if not part:
                continue
            if _CJK.fullmatch(part):
                out.extend(part[i : i + 2] for i in range(max(1, len(part) - 1)))
            else:
                out.append(part)
    return out


def simhash64(text: str) -> int:
    """Charikar's SimHash over :func:`features`, as an unsigned 64-bit int (0 for no features)."""
    weights = [0] * 64
    feats = features(text)
    if not feats:
        return 0
    for f in feats:
        h = int.from_bytes(hashlib.blake2b(f.encode("utf-8"), digest_size=8).digest(), "big")
        for bit in range(64):
            weights[bit] += 1 if (h >> bit) & 1 else -1
    return sum(1 << bit for bit in range(64) if weights[bit] > 0)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
