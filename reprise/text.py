"""Checks on caller text shared by the gateway and the inference service (no grpc, no model)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from reprise.domain import Role, Turn
from reprise.errors import InvalidArgument

#: Characters that draw nothing although Unicode files them as letters or symbols
#: (Hangul fillers, the blank Braille pattern, the Mongolian vowel separator).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")
#: Categories that draw nothing on their own: separators (spaces, incl. no-break and ideographic),
#: controls and format characters (zero-width space, joiners, BOM), unassigned and private use,
#: and combining marks (they only modify a visible character).
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Mc"})


def is_visible(ch: str) -> bool:
    return ch not in _BLANK_LETTERS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES


def check_visible(field: str, text: str) -> None:
    """INVALID_ARGUMENT unless ``text`` has at least one character a reader can see.

    ``str.strip`` is not enough: zero-width spaces, word joiners and Hangul
    fillers are not whitespace to Python, and a text made of them would be
    classified (and cached) like any other.
    """
    if not text.strip():
        raise InvalidArgument(field, "must not be empty")
    if not any(is_visible(ch) for ch in text):
        raise InvalidArgument(field, "has no visible characters (only spaces, zero-width or other invisible characters)")


def check_turns(history: Sequence[Turn]) -> None:
    """Turns alternate user, assistant, ... and the history ends with an assistant turn.

    The new text is the next user turn, so an odd history would put two user
    turns in a row; the chat template would render them as such and the
    model answer a conversation the caller never had.
    """
    for i, turn in enumerate(history):
        check_visible(f"history[{i}].content", turn.content)
        expected = Role.USER if i % 2 == 0 else Role.ASSISTANT
        if turn.role is not expected:
            raise InvalidArgument(f"history[{i}].role", f"must be {expected.value}: turns alternate, user first")
    if len(history) % 2:
        raise InvalidArgument(
            "history",
            f"ends with a user turn (history[{len(history) - 1}]); the new text is the next user turn, "
            "so the history must end with an assistant turn",
        )
