"""The false-hit guard: a semantic candidate that differs from the query in meaning is rejected.

Embeddings put "I like this movie" and "I don't like this movie" close
together (cosine ~0.85 with USE-multilingual): a threshold alone cannot tell
them apart. The guard looks at the tokens that *differ* between the query and
the candidate and rejects the candidate when they include:

- a negation: the texts carry different numbers of negation cues ("not",
  "never", "n't", 不/没/无/未/非/别 ...), or one side has a negated form of a word
  on the other ("unclear" vs "clear");
- an antonym: a word on one side whose antonym is on the other (on/off, 好吃/难吃);
- a number: the quantities differ (digits, English number words, Chinese numerals;
  "three" equals "3", a lone article-like "one"/"一个" is ignored);
- a named entity: the names differ (English: capitalised words inside a sentence and
  country/language names; Chinese: jieba's proper-noun tags and 《titles》; Latin
  words inside Chinese text).

Chinese is segmented with jieba (its dictionary tags places, people and
organisations), English with a regular expression. The guard returns a reason
string for the first difference it finds, or ``None`` to accept.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from cache_svc.core import lexicon as lx

_SEGMENT = re.compile(r"([\u3400-\u9fff\uf900-\ufaff《》〈〉「」『』]+)")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_EN_TOKEN = re.compile(r"[0-9]+(?:[.,][0-9]+)*%?|[A-Za-z]+(?:'[A-Za-z]+)?")
_TITLE = re.compile(r"《([^》]+)》")
_NUMBER = re.compile(r"^[0-9]+(?:[.,][0-9]+)*%?$")
_ZH_NUMERAL = re.compile(r"[零〇一二两兩三四五六七八九十百千万萬亿億半]+")
_ZH_CLASSIFIERS = frozenset("个個首张張封部本双雙件条條只隻位杯次篇段句家台辆輛份种種块塊把间間座棵颗朵匹头架艘道场项顿趟遍盏枝支片")
_CONTRACTIONS = {"won't": ("will", "not"), "can't": ("can", "not"), "shan't": ("shall", "not"),
                 **{f"{p}'d": (p, "would") for p in ("i", "we", "you", "they", "he", "she")}}
# Words that hold a numeral character but no number (一下, 一定), longest first: taken out of a
# longer jieba word before its numerals are read (解释一下 is not "explain 1").
_ZH_NOT_NUMBERS = sorted(lx.ZH_NUMBER_EXCEPTIONS, key=len, reverse=True)


class Guard(Protocol):
    """Decides whether a semantic candidate may be served for a query."""

    def check(self, query: str, candidate: str) -> str | None:
        """``None`` to accept; otherwise why the candidate is rejected."""
        ...


@dataclass(frozen=True, slots=True)
class _Token:
    text: str  # casefolded
    entity: bool = False
    number: float | None = None
    article: bool = False  # "one"/"一个": ignored when the other side has no number


_jieba_lock = threading.Lock()


@lru_cache(maxsize=1)
def _posseg():  # type: ignore[no-untyped-def]
    """jieba's tagger, initialised once (loads its dictionary: ~1.5 s)."""
    import jieba
    import jieba.posseg as pseg

    jieba.setLogLevel(logging.WARNING)
    with _jieba_lock:
        jieba.initialize()
    return pseg


def _zh_value(run: str) -> float:
    """Value of a run of Chinese numerals ("三", "一百二十", "两万五千", "半")."""
    total, section, digit = 0.0, 0.0, None
    for ch in run:
        if ch == "半":
            section += 0.5
        elif ch in lx.ZH_DIGITS:
            digit = lx.ZH_DIGITS[ch]
        else:
            unit = lx.ZH_UNITS[ch]
            if unit >= 10_000:
                total = (total + section + (digit or 0)) * unit
                section, digit = 0.0, None
            else:
                section += (1 if digit is None else digit) * unit
                digit = None
    return total + section + (digit or 0)


def _zh_numbers(word: str, next_word: str) -> list[tuple[float, bool]]:
    """``(value, article)`` for each numeral run in a jieba word; article: a lone 一 before a classifier."""
    if word in lx.ZH_NUMBER_EXCEPTIONS or "第" in word:
        return []
    for part in _ZH_NOT_NUMBERS:
        if len(part) > 1 and part in word:
            word = word.replace(part, " ")
    out = []
    for m in _ZH_NUMERAL.finditer(word):
        value = _zh_value(m.group(0))
        after = word[m.end() : m.end() + 1] or next_word[:1]
        out.append((value, value == 1 and after in _ZH_CLASSIFIERS))
    return out


def _en_number(tok: str) -> float | None:
    if _NUMBER.match(tok):
        return float(tok.rstrip("%").replace(",", ""))
    return lx.NUMBER_WORDS_EN.get(tok)


@lru_cache(maxsize=1)
def _country_names() -> frozenset[str]:
    """Lower-cased single-word country and major-language names (for text typed in lower case)."""
    import pycountry

    names: set[str] = set()
    for c in pycountry.countries:
        for attr in ("name", "common_name"):
            value = getattr(c, attr, None)
            if value and " " not in value and "," not in value:
                names.add(value.casefold())
    for lang in pycountry.languages:
        if getattr(lang, "alpha_2", None) and " " not in lang.name:
            names.add(lang.name.casefold())
    return frozenset(names - lx.EN_NOT_ENTITIES)


def _tokens_en(segment: str, sentence_start: bool) -> list[_Token]:
    out: list[_Token] = []
    countries = _country_names()
    start = sentence_start
    for m in re.finditer(_EN_TOKEN.pattern + r"|[.!?]", segment):
        raw = m.group(0)
        if raw in ".!?":
            start = True
            continue
        low = raw.casefold()
        if low in lx.CASUAL_EN:
            out += [_Token(w) for w in lx.CASUAL_EN[low]]
        elif low in _CONTRACTIONS:
            out += [_Token(w) for w in _CONTRACTIONS[low]]
        elif low.endswith("n't"):
            out += [_Token(low[:-3]), _Token("not")]
        elif "'" in low:
            out.append(_Token(low.split("'")[0]))
        else:
            number = _en_number(low)
            capital = raw[0].isupper() and not start and low not in lx.EN_NOT_ENTITIES
            acronym = len(raw) > 1 and raw.isupper()
            out.append(_Token(low, entity=(capital or acronym or low in countries) and number is None,
                              number=number, article=low == "one"))
        start = False
    return out


def _tokens_zh(segment: str) -> list[_Token]:
    out: list[_Token] = []
    for title in _TITLE.findall(segment):
        out.append(_Token(f"《{title}》", entity=True))
    words = list(_posseg().cut(_TITLE.sub(" ", segment)))
    for i, w in enumerate(words):
        word, flag = w.word.strip(), w.flag
        if not word or not _CJK.search(word):
            continue
        nxt = words[i + 1].word if i + 1 < len(words) else ""
        numbers = _zh_numbers(word, nxt)
        entity = (flag in lx.ZH_ENTITY_TAGS or word in lx.ZH_ENTITIES_EXTRA) and not numbers
        out.append(_Token(word, entity=entity))
        out += [_Token(f"#{v:g}", number=v, article=article) for v, article in numbers]
    return out


def tokenize(text: str) -> list[_Token]:
    """Tokens of a raw text: Chinese through jieba, everything else through a regex."""
    text = unicodedata.normalize("NFKC", text)
    out: list[_Token] = []
    start = True
    for part in _SEGMENT.split(text):
        if not part:
            continue
        if _CJK.search(part) or "《" in part:
            out += _tokens_zh(part)
            start = False
        else:
            out += _tokens_en(part, start)
            start = bool(re.search(r"[.!?]\s*$", part))
    return out


_A_NOT_A = re.compile(r"(.+)[不没]\1")  # 能不能, 是不是, 有没有: a yes/no question, not a negation


def _zh_negates(word: str) -> bool:
    """Whether a Chinese word negates: 不好, 没有, 看不清; not 不错/真不错 (praise) or 能不能 (a question)."""
    if _A_NOT_A.search(word) or any(e in word for e in lx.NEGATION_ZH_EXCEPTIONS if len(e) > 1 and e[0] in "不没无非未"):
        return False
    if word in lx.NEGATION_ZH_EXCEPTIONS:
        return False
    word = word.lstrip("很挺真太也都还就又")
    if any(word.startswith(cue) or (cue in word and len(cue) > 1) for cue in lx.NEGATION_ZH):
        return True
    return "不" in word[1:]  # 看不清, 吃不下


def _negations(tokens: list[_Token]) -> int:
    n = 0
    for i, t in enumerate(tokens):
        if t.text in lx.NEGATION_EN:
            if t.text == "not" and i and tokens[i - 1].text == "or":
                continue  # "whether it is ripe or not": a question, not a negation
            n += 1
        elif _CJK.match(t.text) and _zh_negates(t.text):
            # 会 + 不会, 是 + 不是: jieba cut an A-not-A question in two.
            if not (i and t.text[1:] and tokens[i - 1].text.endswith(t.text[1:]) and t.text[0] in "不没"):
                n += 1
    return n


class LexicalGuard:
    """The default :class:`Guard`: negation, antonym, number and entity differences (en + zh)."""

    def __init__(self) -> None:
        # Load jieba's dictionary and the country names now, not during the first lookup.
        _posseg()
        _country_names()

    def check(self, query: str, candidate: str) -> str | None:
        return self.check_tokens(tokenize(query), tokenize(candidate))

    def check_tokens(self, a: list[_Token], b: list[_Token]) -> str | None:
        """:meth:`check` on texts already cut by :func:`tokenize`."""
        na, nb = _negations(a), _negations(b)
        if na != nb:
            return f"negation differs ({na} vs {nb})"
        words_a = Counter(t.text for t in a)
        words_b = Counter(t.text for t in b)
        only_a, only_b = words_a - words_b, words_b - words_a
        for mine, other in ((only_a, only_b), (only_b, only_a)):
            for w in mine:
                for prefix in lx.NEGATION_PREFIXES_EN:
                    # A bare word of 4+ letters: "into" is not a negated "to".
                    base = w[len(prefix) :]
                    if w.startswith(prefix) and len(base) >= 4 and base in other:
                        return f"negation differs: {w} / {base}"
        reason = self._antonym(only_a, only_b, words_a, words_b)
        if reason:
            return reason
        nums_a = self._numbers(a, b)
        nums_b = self._numbers(b, a)
        if nums_a != nums_b:
            return f"number differs ({_fmt(nums_a)} vs {_fmt(nums_b)})"
        ents = _entities(a, words_b) ^ _entities(b, words_a)
        if ents:
            return f"entity differs ({', '.join(sorted(ents))})"
        return None

    @staticmethod
    def _numbers(mine: list[_Token], other: list[_Token]) -> Counter[float]:
        """Quantities; an article-like "one"/"一封" counts only where the other side says 1 outright."""
        other_says_one = any(t.number == 1 and not t.article for t in other)
        return Counter(
            t.number for t in mine if t.number is not None and (not t.article or other_says_one)
        )

    @staticmethod
    def _antonym(only_a: Counter[str], only_b: Counter[str], words_a: Counter[str], words_b: Counter[str]) -> str | None:
        text_a, text_b = " ".join(words_a), " ".join(words_b)
        for x, y in lx.ANTONYMS_EN:
            for p, q in ((x, y), (y, x)):
                if p in only_a and q in only_b:
                    return f"antonym: {p} / {q}"
        zh_a, zh_b = [w for w in only_a if _CJK.match(w)], [w for w in only_b if _CJK.match(w)]
        if zh_a and zh_b:
            for x, y in lx.ANTONYMS_ZH:
                for p, q in ((x, y), (y, x)):
                    if _has(zh_a, p) and _has(zh_b, q) and p not in text_b and q not in text_a:
                        return f"antonym: {p} / {q}"
        return None


def _has(words: list[str], antonym: str) -> bool:
    """A word of the list holds this antonym. One character must be the word itself, give or take a
    degree word or particle (快, 很快, 快了), or inside 晚上 and 在室温下 上/下 would read as opposites."""
    if len(antonym) > 1:
        return any(antonym in w for w in words)
    return any(w.lstrip("很挺真太更最比较").rstrip("的了吗呢吧啊呀点些") == antonym for w in words)


def _entities(tokens: list[_Token], other_words: Counter[str]) -> set[str]:
    """Entity tokens, except Chinese ones that merely wrap a word of the other text.

    jieba sometimes tags a phrase such as 太精彩 ("too wonderful") as a name; when
    the other side has 精彩, the phrase is not a different name.
    """
    out = set()
    joined = "".join(other_words)
    for t in tokens:
        if not t.entity or t.text in other_words or t.text in lx.FUNCTION_WORDS_ZH or t.text in lx.EN_NOT_ENTITIES:
            continue  # the same word on the other side, only not capitalised there ("Lisbon" / "lisbon")
        if t.text.startswith("《") and t.text.strip("《》") in joined:
            continue
        if _CJK.match(t.text) and set(t.text) <= set(joined):
            continue  # jieba named a span that the other side has too, cut otherwise (宝能放 / 充电宝 能不能 放)
        if _CJK.match(t.text) and t.text not in other_words and any(
            len(w) >= 2 and _CJK.match(w) and (w in t.text or t.text in w) for w in other_words
        ):
            continue
        out.add(t.text)
    return out


def _fmt(c: Counter[float]) -> str:
    return ",".join(f"{v:g}" for v in sorted(c.elements())) or "none"
