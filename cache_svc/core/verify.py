"""Verification: is a semantic candidate the *same request* as the query?

The embedding index finds requests that are *about* the same thing; it cannot
tell "convert miles to km" from "convert km to miles" (cosine 0.97) or "a laptop
for travel" from "a lightweight laptop for travel". A candidate is served only
when every difference between the two texts is explained as harmless. This is
a proof of sameness, not a hunt for known differences: anything left
unexplained is a miss, because a miss costs one model run and a wrong hit is
replayed to everyone who asks.

Stages, cheapest first (each returns a reason to reject, or ``None``):

1. **language**: a reply is never served to a request written in another
   language: a chat reply would come back in the wrong one. A sentiment label
   would not, but two languages never align word by word (stage 3), so no
   proof of sameness is possible: a miss for every task.
2. **closed classes** (:class:`~cache_svc.core.guard.LexicalGuard`): negation,
   numbers and named entities must agree. These are small closed word classes,
   so a word list describes them completely.
3. **alignment**: both texts are cut into words (jieba for Chinese, a regex and
   the Snowball stemmer for English). Function words (articles, particles,
   politeness, fillers) are ignored; pronouns, question words, quantifiers,
   modals, relation words, units and time words are closed classes: they must
   match exactly, up to equivalent forms ("how"/"怎么"/"如何" ...). Content
   words must match by stem, or be substituted one for one by a word whose own
   embedding is at least ``synonym_min`` from it (fast/quick 0.92, big/large
   0.96; antonyms and sibling terms measure lower: fast/slow 0.80, rise/fall
   0.59, cat/dog 0.67) and that is not a listed antonym. A word present on one
   side only is a constraint added or dropped: a miss.
4. **order**: two matched words that swap places around a third word that stays
   between them ("miles *to* km" / "km *to* miles", 猫*追*狗 / 狗*追*猫) are a
   role or direction swap: a miss. A word moved without crossing such an anchor
   (topicalisation: 这部电影我很喜欢 / 我很喜欢这部电影) is not.

Word embeddings come from the cache's own sentence embedder (one batched call
per verification for the few words that need it, memoised), so verification
adds no model and runs anywhere the semantic tier runs.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from cache_svc.core import lexicon as lx
from cache_svc.core import thesaurus
from cache_svc.core.guard import _ZH_CLASSIFIERS, _ZH_NUMERAL, LexicalGuard, _Token, tokenize

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


class Verifier(Protocol):
    """Decides whether a semantic candidate may be served for a query."""

    def check(self, query: str, candidate: str, task: str) -> str | None:
        """``None`` to serve; otherwise why the candidate is rejected."""
        ...


class WordEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def language(text: str) -> str:
    """The script a text is written in: zh, ja, ko, latin, or other (for mixed text, the main one)."""
    text = unicodedata.normalize("NFKC", text)
    counts = {
        "ja": len(_KANA.findall(text)),
        "ko": len(_HANGUL.findall(text)),
        "zh": len(_CJK.findall(text)),
        "latin": len(_LATIN.findall(text)),
    }
    if counts["ja"]:
        return "ja"
    # One CJK character weighs about as much as a word of ~3 Latin letters: "iPhone 15 的电池怎么样" is Chinese.
    if counts["zh"] * 3 >= counts["latin"] and counts["zh"]:
        return "zh"
    if counts["ko"] * 3 >= counts["latin"] and counts["ko"]:
        return "ko"
    return "latin" if counts["latin"] else "other"


@dataclass(frozen=True)
class VerifyConfig:
    #: Cosine between two words' own embeddings for one to stand in for the other.
    synonym_min: float = 0.88
    #: The same cosine for two words a curated thesaurus holds interchangeable (:mod:`.thesaurus`):
    #: the thesaurus vouches for the pair, the cosine only rules out a sense the request cannot mean.
    thesaurus_min: float = 0.5
    #: Memoised word embeddings (words, not requests: bounded by the vocabulary in use).
    word_cache_size: int = 50_000


@dataclass(frozen=True, slots=True)
class _Word:
    key: str  # what must match: a stem, a casefolded word, or a closed-class concept id
    text: str  # as written (casefolded), for reasons and embeddings
    cls: str  # "content", or the closed class it belongs to
    pos: float  # position among all words, function words included (for the order check)


_THREAD = threading.local()


@lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    """The Snowball stem of an English word. A stemmer keeps the word it works on in its own fields, so
    each verification thread has its own: one shared by the threads of a burst of lookups mixed their
    words up (IndexError inside ``stemWord``, INTERNAL to the caller)."""
    stemmer = getattr(_THREAD, "stemmer", None)
    if stemmer is None:
        import snowballstemmer

        stemmer = _THREAD.stemmer = snowballstemmer.stemmer("english")
    return stemmer.stemWord(word)


def _classify(text: str, entity: bool, number: bool) -> tuple[str, str] | None:
    """(key, class) of a word; class "function" for a word that carries no request, ``None`` to drop it."""
    if number:
        return text, "number"
    for form in (text, _zh_core(text, entity)) if _CJK.search(text) else (text,):
        if not form:
            return None
        concept = lx.CLOSED_CLASS.get(form)
        if concept is not None:
            return concept
        if form in lx.FUNCTION_WORDS_EN or form in lx.FUNCTION_WORDS_ZH or form in _ZH_CLASSIFIERS:
            return form, "function"  # (a classifier on its own: 哪座山 / 山是哪座)
        text = form
    if _CJK.search(text):
        return text, "entity" if entity else "content"
    return _stem(lx.IRREGULAR_EN.get(text, text)), "entity" if entity else "content"


def _zh_core(word: str, entity: bool) -> str:
    """A Chinese word without its numerals (carried by number tokens), degree prefix and particles.

    三个 -> "" (the number 3 is a token of its own), 五百字 -> 字, 真不错 -> 不错, 好吃吗 -> 好吃.
    """
    for tail in ("一下", "一点"):  # 解释一下 = 解释
        if len(word) > len(tail) and word.endswith(tail):
            word = word[: -len(tail)]
    if not entity and word not in lx.ZH_NUMBER_EXCEPTIONS and "第" not in word:
        word = _ZH_NUMERAL.sub("", word)
        if len(word) == 1 and word in _ZH_CLASSIFIERS:
            return ""
    if len(word) > 1 and word[-1] in _ZH_CLASSIFIERS and word[:-1] in lx.CLOSED_CLASS:
        word = word[:-1]  # 几条 -> 几, 多少个 -> 多少
    while len(word) > 1 and word[0] in lx.ZH_PREFIX_CHARS:
        word = word[1:]
    while len(word) > 1 and word[-1] in lx.ZH_SUFFIX_CHARS:
        word = word[:-1]
    return word


def words(text: str | list[_Token]) -> list[_Word]:
    """The words of a request (or of its :func:`tokenize` tokens), classified, in order, with positions."""
    out: list[_Word] = []
    tokens = tokenize(text) if isinstance(text, str) else text
    skip = -1
    for pos, tok in enumerate(tokens):
        if pos == skip or (tok.number is not None and tok.article):
            continue  # "a"/"一个" said as "one"
        if pos and tok.text[:1] in ("不", "没") and tok.text[1:] and tokens[pos - 1].text.endswith(tok.text[1:]):
            continue  # 能 + 不能: an A-not-A question, asked either way
        if tok.text == "not" and pos and tokens[pos - 1].text == "or":
            continue  # "... or not": the question asked either way
        text = f"#{tok.number:g}" if tok.number is not None else tok.text
        if text == "what" and pos + 1 < len(tokens) and tokens[pos + 1].text == "time":
            text, skip = "when", pos + 1  # "what time does it open" asks when
        got = _classify(text, tok.entity, tok.number is not None)
        if got is not None and _filler(tokens, pos):
            got = (tok.text, "function")
        if got is not None:
            out.append(_Word(got[0], tok.text, got[1], pos))
    return _manner_and_reason(out)


def _filler(tokens: list[_Token], pos: int) -> bool:
    """A word that is a filler only where it stands: "I'd *like* to know", "quick question",
    怎么*处理*, 发烧的*时候*, *这部*电影."""
    text = tokens[pos].text
    before = tokens[pos - 1].text if pos else ""
    after = tokens[pos + 1].text if pos + 1 < len(tokens) else ""
    if text == "like" and before == "would":
        return True
    if (before, text) in lx.FILLER_PAIRS_EN or (text, after) in lx.FILLER_PAIRS_EN:
        return True
    if text in lx.ZH_HOW_VERBS and lx.CLOSED_CLASS.get(before, ("",))[0] == "question.how":
        return True
    if text == "时候" and before == "的":
        return True
    return len(text) == 2 and text[0] in "这那" and text[1] in _ZH_CLASSIFIERS


def _manner_and_reason(ws: list[_Word]) -> list[_Word]:
    """"What is the way to X" asks how, "what causes X" asks why: say so, and drop the nouns that said it."""
    # ("by the way" is a filler, not a manner.)
    texts = [w.text if [v.text for v in ws[max(i - 2, 0):i]] != ["by", "the"] else "" for i, w in enumerate(ws)]
    asks = ("question.how", lx.MANNER_NOUNS) if any(t in lx.MANNER_NOUNS for t in texts) else (
        ("question.why", lx.REASON_NOUNS) if any(t in lx.REASON_NOUNS for t in texts) else None)
    if asks is None:
        return ws
    key, nouns = asks
    out: list[_Word] = []
    for i, w in enumerate(ws):
        if texts[i] in nouns or (w.text in lx.PLAIN_GOOD and i + 1 < len(ws) and texts[i + 1] in nouns):
            out.append(_Word(w.text, w.text, "function", w.pos))
        elif w.key == "question.what":
            out.append(_Word(key, w.text, "question", w.pos))
        else:
            out.append(w)
    return out


class RequestVerifier:
    """The default :class:`Verifier`: language, closed classes, word alignment, order."""

    def __init__(self, embedder: WordEmbedder | None = None, config: VerifyConfig = VerifyConfig()) -> None:
        self._guard = LexicalGuard()
        self._embedder = embedder
        self._config = config
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        _stem("warming")
        thesaurus.warm()  # ~1.5 s once per process, at start rather than on the first lookup

    def check(self, query: str, candidate: str, task: str) -> str | None:
        la, lb = language(query), language(candidate)
        if la != lb:
            return f"language differs ({la} vs {lb})"
        if task == "sentiment" and (quoted := _quoted(query)) and quoted == _quoted(candidate):
            return None  # "is this review positive: “...”" / "sentiment of “...”": the label is the quote's
        ta, tb = tokenize(query), tokenize(candidate)
        why = self._guard.check_tokens(ta, tb)
        if why is not None:
            return why
        return self.align(words(ta), words(tb))

    # ---- alignment -----------------------------------------------------------------------

    def align(self, a: list[_Word], b: list[_Word]) -> str | None:
        ta, tb = _tense(a), _tense(b)
        if ta - tb and tb - ta:
            return f"tense differs ({'/'.join(sorted(ta))} vs {'/'.join(sorted(tb))})"
        pairs, rest_a, rest_b = _match_exact(a, b)
        rest_a = [w for w in rest_a if w.cls != "function"]
        rest_b = [w for w in rest_b if w.cls != "function"]
        why = _closed_class_difference(rest_a, rest_b, a, b)
        if why is not None:
            return why
        ca = [w for w in rest_a if w.cls in ("content", "entity")]
        cb = [w for w in rest_b if w.cls in ("content", "entity")]
        if ca and cb:
            merged, ca, cb = _merge_segmentation(ca, cb)
            pairs += merged
        if ca or cb:
            ca, cb = _drop_typos(ca, b), _drop_typos(cb, a)
        if ca and cb:
            more, ca, cb = self._match_synonyms(ca, cb)
            pairs += more
        if ca and cb and self._same_phrase(ca, cb):
            ca, cb = [], []
        if ca or cb:
            return "unmatched words: " + " / ".join(
                ",".join(w.text for w in side) or "-" for side in (ca, cb)
            )
        return _swapped(pairs)

    def _match_synonyms(self, a: list[_Word], b: list[_Word]) -> tuple[list[tuple[_Word, _Word]], list[_Word], list[_Word]]:
        """Pair off substitutions (greedy, closest first): words that embed close together and are
        no known opposites, or that a curated thesaurus holds interchangeable."""
        if self._embedder is None:
            return [], a, b
        va, vb = self._vectors_of([w.text for w in a]), self._vectors_of([w.text for w in b])
        sims = va @ vb.T
        cfg = self._config
        floor = min(cfg.synonym_min, cfg.thesaurus_min)
        pairs: list[tuple[_Word, _Word]] = []
        used_a: set[int] = set()
        used_b: set[int] = set()
        for flat in np.argsort(-sims, axis=None):
            i, j = divmod(int(flat), sims.shape[1])
            sim = float(sims[i, j])
            if sim < floor:
                break
            if i in used_a or j in used_b or a[i].cls == "entity" or b[j].cls == "entity":
                continue
            if not _substitutes(a[i].text, b[j].text, sim, cfg):
                continue
            pairs.append((a[i], b[j]))
            used_a.add(i)
            used_b.add(j)
        return (pairs, [w for i, w in enumerate(a) if i not in used_a], [w for j, w in enumerate(b) if j not in used_b])

    def _same_phrase(self, a: list[_Word], b: list[_Word]) -> bool:
        """Chinese leftovers that say the same thing as a phrase (转换成 / 转 + 成): compare them joined."""
        if self._embedder is None or not all(_CJK.search(w.key) and w.cls == "content" for w in a + b):
            return False
        ja, jb = "".join(w.text for w in a), "".join(w.text for w in b)
        va, vb = self._vectors_of([ja, jb])
        return float(va @ vb) >= self._config.synonym_min and not _antonyms(ja, jb)

    def _vectors_of(self, texts: list[str]) -> np.ndarray:
        assert self._embedder is not None
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            fresh = self._embedder.embed(missing)
            with self._lock:
                for t, v in zip(missing, fresh, strict=True):
                    self._vectors[t] = v
                while len(self._vectors) > self._config.word_cache_size:
                    self._vectors.popitem(last=False)
        with self._lock:
            return np.stack([self._vectors[t] for t in texts])


def _drop_typos(left: list[_Word], other: list[_Word]) -> list[_Word]:
    """The words left over without those that misspell a word of the other request (recomend / recommend)."""
    return [w for w in left if not (w.cls == "content" and any(thesaurus.typo(w.text, v.text) for v in other))]


def _match_exact(a: list[_Word], b: list[_Word]) -> tuple[list[tuple[_Word, _Word]], list[_Word], list[_Word]]:
    """Pair equal keys, occurrence by occurrence in order; return the pairs and what is left."""
    queue: dict[str, list[_Word]] = {}
    for w in b:
        queue.setdefault(w.key, []).append(w)
    pairs, rest_a = [], []
    for w in a:
        if queue.get(w.key):
            pairs.append((w, queue[w.key].pop(0)))
        else:
            rest_a.append(w)
    rest_b = [w for ws in queue.values() for w in ws]
    rest_b.sort(key=lambda w: w.pos)
    return pairs, rest_a, rest_b


def _closed_class_difference(a: list[_Word], b: list[_Word], whole_a: list[_Word], whole_b: list[_Word]) -> str | None:
    """Closed-class words left unmatched: a substitution within a class is a different request.

    A pronoun, question word or obligation present on one side only is tolerated
    ("can *you* recommend" / "recommend", "*how* to reset" / "reset"): requests are
    phrased with or without them. Relation words may differ unless they contradict
    (to/from, before/after). Quantifiers, possibility, units, time words and
    numbers change the request even when only one side has them.
    """
    ca = Counter(w.cls for w in a if w.cls not in ("content", "entity"))
    cb = Counter(w.cls for w in b if w.cls not in ("content", "entity"))
    for cls in sorted(set(ca) | set(cb)):
        if cls == "relation":
            ka = {w.key for w in a if w.cls == cls}
            kb = {w.key for w in b if w.cls == cls}
            if not any(frozenset({x, y}) in lx.RELATION_CONTRASTS for x in ka for y in kb):
                continue
        elif cls == "obligation" and not (ca[cls] and cb[cls]):
            # "how do I" / "how should I" ask the same; "can I take it?" / "should I take it?" do not:
            # obligation may go unsaid only in a wh-question (one with a question word on both sides).
            if any(w.cls == "question" for w in whole_a) and any(w.cls == "question" for w in whole_b):
                continue
        elif not (ca[cls] and cb[cls]) and cls in lx.OPTIONAL_CLASSES:
            continue
        ta = ",".join(w.text for w in a if w.cls == cls) or "-"
        tb = ",".join(w.text for w in b if w.cls == cls) or "-"
        return f"{cls} differs: {ta} / {tb}"
    return None


def _tense(ws: list[_Word]) -> set[str]:
    keys = {w.key for w in ws}
    return {t for t, markers in (("past", lx.PAST_EN), ("future", lx.FUTURE_EN)) if keys & markers}


def _merge_segmentation(a: list[_Word], b: list[_Word]) -> tuple[list[tuple[_Word, _Word]], list[_Word], list[_Word]]:
    """Chinese words left over only because jieba cut the two texts differently.

    电池续航 / 电池 + 续航: when the characters of the unmatched Chinese words on
    one side are exactly those on the other, they are the same words. They are
    paired character by character, so the order check still sees 中文翻译成英文 /
    英文翻译成中文 swap 中 and 英 around 翻.
    """
    za = [w for w in a if _CJK.search(w.key)]
    zb = [w for w in b if _CJK.search(w.key)]
    ca, cb = _chars(za), _chars(zb)
    ka, kb = Counter(c.key for c in ca), Counter(c.key for c in cb)
    # Characters of one-character function words and classifiers may be left over on one side
    # (宝能放 / 充电宝 + 能不能 + 放: 能 is said on both sides, cut differently); no other may.
    if not (za and zb and all(ch in lx.FUNCTION_WORDS_ZH or ch in _ZH_CLASSIFIERS for ch in (ka - kb) + (kb - ka))):
        return [], a, b
    pairs, _, _ = _match_exact(ca, cb)
    return pairs, [w for w in a if w not in za], [w for w in b if w not in zb]


_QUOTED = re.compile(r'“([^”]{8,})”|"([^"]{8,})"|「([^」]{8,})」|『([^』]{8,})』')


def _quoted(text: str) -> str:
    """The one quoted passage of a request (whitespace and case folded), or "" when there is not exactly one."""
    found = _QUOTED.findall(text)
    if len(found) != 1:
        return ""
    return " ".join("".join(found[0]).casefold().split())


def _chars(ws: list[_Word]) -> list[_Word]:
    return [_Word(ch, ch, w.cls, w.pos + i / 100) for w in ws for i, ch in enumerate(w.key.strip("《》"))]


def _substitutes(x: str, y: str, sim: float, cfg: VerifyConfig) -> bool:
    """Whether ``y`` may stand in for ``x`` (their word embeddings' cosine is ``sim``)."""
    if (x, y) in lx.ANTONYM_SET or (y, x) in lx.ANTONYM_SET or thesaurus.antonyms(x, y):
        return False
    if sim >= cfg.thesaurus_min and thesaurus.synonyms(x, y):
        return True  # curated: trusted over the shared-ending rule (去除/清除)
    return sim >= cfg.synonym_min and not _antonyms(x, y)


def _antonyms(x: str, y: str) -> bool:
    """Listed antonyms, or a contrast made by prefixes (encrypt/decrypt 0.99, inhale/exhale 0.87, 升温/降温).

    Embeddings see two words built on one stem as near-identical; synonyms are
    rarely built that way, so a shared ending under different beginnings is a miss.
    """
    if (x, y) in lx.ANTONYM_SET or (y, x) in lx.ANTONYM_SET:
        return True
    n = 0
    while n < min(len(x), len(y)) and x[-1 - n] == y[-1 - n]:
        n += 1
    if n == 0 or n == len(x) or n == len(y):
        return False
    return n >= 3 or (bool(_CJK.match(x)) and n >= 1 and len(x) == len(y) == 2)


# Words that fill roles: who does what to whom, from where to where.
_ARGUMENTS = frozenset({"content", "entity", "pronoun", "number", "unit"})


def _swapped(pairs: list[tuple[_Word, _Word]]) -> str | None:
    """Two matched words that trade places around a word that stays between them.

    The anchor may be a function word: 房东*给*租客 / 租客*给*房东, "a square *a* rectangle".
    Two content words that trade places next to each other ("cat dog food" / "dog
    cat food") are a swap too.
    """
    by_a = sorted(pairs, key=lambda p: p[0].pos)
    meaningful = [p for p in by_a if p[0].cls != "function"]
    recased = [x.text for x, y in pairs if x.cls == "pronoun" and (x.text in lx.SUBJECT_PRONOUNS) != (y.text in lx.SUBJECT_PRONOUNS)]
    if recased:
        words_ = [p for p in meaningful if p[0].cls in ("content", "entity")]
        for (xa, xb), (ya, yb) in zip(words_, words_[1:]):
            if xb.pos > yb.pos:
                return f"roles differ: {recased[0]} … {xa.text} … {ya.text}"
    for i in range(len(by_a)):
        for j in range(i + 1, len(by_a)):
            (xa, xb), (ya, yb) = by_a[i], by_a[j]
            if xb.pos < yb.pos or xa.cls not in _ARGUMENTS or ya.cls not in _ARGUMENTS:
                continue  # same order on both sides, or a word that moves freely ("什么是" / "是什么")
            # x before y in a, after y in b: is there an anchor z between them in both?
            for za, zb in by_a[i + 1 : j]:
                if not yb.pos < zb.pos < xb.pos or za.key in lx.SYMMETRIC:
                    continue
                if za.key in lx.WEAK_ANCHORS and not (ya.pos - xa.pos == 2 and xb.pos - yb.pos == 2):
                    continue
                return f"order differs: {xa.text} … {za.text} … {ya.text}"
    for (xa, xb), (ya, yb) in zip(meaningful, meaningful[1:]):
        if ya.pos == xa.pos + 1 and xb.pos == yb.pos + 1 and {xa.cls, ya.cls} <= {"content", "entity"}:
            return f"order differs: {xa.text} {ya.text} / {ya.text} {xa.text}"
    return None
