"""Invisible-only text and history that does not alternate through the new text (issue 24, item 5)."""

from __future__ import annotations

import pytest

from gateway.core.limits import Validator
from gateway.core.types import Prompt
from reprise.domain import Role, Turn
from reprise.errors import InvalidArgument
from reprise.text import check_turns, check_visible

U, A = Role.USER, Role.ASSISTANT
INVISIBLE = [
    "\u200b",  # zero-width space
    "\u00a0\u00a0",  # no-break spaces
    "\u3000",  # ideographic space
    "\u200b\u00a0\u3000\u2060\ufeff\u200d",  # with a word joiner, a BOM, a zero-width joiner
    "\u3164\u115f\u2800",  # Hangul fillers and the blank Braille pattern: "letters" that draw nothing
    "\u0301\u0308",  # combining marks with nothing to sit on
    " \t\n",
]


@pytest.mark.parametrize("text", INVISIBLE)
def test_invisible_only_text_is_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument, match="^text: "):
        check_visible("text", text)
    with pytest.raises(InvalidArgument, match="^text: "):
        Validator().text(text)
    with pytest.raises(InvalidArgument, match=r"^history\[0\]\.content: "):
        Validator().chat(Prompt("hi", (Turn(U, text), Turn(A, "ok"))))


@pytest.mark.parametrize("text", ["a", "\u200bhi\u200b", "好", "e\u0301", "😀", "١٢٣"])
def test_text_with_one_visible_character_passes(text: str) -> None:
    check_visible("text", text)


def test_history_alternates_through_the_new_text() -> None:
    check_turns(())
    check_turns((Turn(U, "a"), Turn(A, "b")))
    with pytest.raises(InvalidArgument, match="^history: ends with a user turn"):
        check_turns((Turn(U, "a"),))
    with pytest.raises(InvalidArgument, match="^history: ends with a user turn"):
        Validator().chat(Prompt("hi", (Turn(U, "a"), Turn(A, "b"), Turn(U, "c"))))
    with pytest.raises(InvalidArgument, match=r"^history\[1\]\.role: must be assistant"):
        check_turns((Turn(U, "a"), Turn(U, "b")))
