"""Text normalization before hashing: requests that differ only in form share one exact key.

Each step is a switch in :class:`Normalization` (and a service flag), applied in this order:

1. Unicode NFKC: full-width letters, digits and punctuation become half-width
   ("ＡＢＣ１２３！" -> "ABC123!"), compatibility forms fold ("ﬁ" -> "fi").
2. Whitespace collapse: runs of any Unicode whitespace become one space; ends are trimmed.
3. Case fold for Latin: ``str.casefold`` (so "Straße" == "STRASSE"); CJK has no case.
4. Trailing punctuation: sentence-final ".!?。！？…" and similar are dropped
   ("Is it good?" == "is it good"). Inner punctuation is kept: it can change meaning.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")
# Sentence-final marks in Latin and CJK text (after NFKC full-width "！？" are already "!?").
_TRAILING_PUNCT = re.compile(r"[\s.!?。！？…~～、,，;；:：]+$")


@dataclass(frozen=True)
class Normalization:
    nfkc: bool = True
    collapse_whitespace: bool = True
    casefold: bool = True
    strip_trailing_punctuation: bool = True

    def __call__(self, text: str) -> str:
        if self.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.collapse_whitespace:
            text = _WHITESPACE.sub(" ", text).strip()
        if self.casefold:
            text = text.casefold()
        if self.strip_trailing_punctuation:
            stripped = _TRAILING_PUNCT.sub("", text)
            # A text that is only punctuation ("?!") keeps its form: it is its whole meaning.
            text = stripped or text
        return text
