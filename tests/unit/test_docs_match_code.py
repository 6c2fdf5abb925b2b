"""The README's configuration reference is generated from the services' parsers and must not drift."""

from __future__ import annotations

from pathlib import Path

from reprise import flagdoc

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_flag_reference_matches_the_parsers() -> None:
    text = README.read_text(encoding="utf-8")
    assert flagdoc.BEGIN in text and flagdoc.END in text, "README lost its generated flags block"
    block = text[text.index(flagdoc.BEGIN) : text.index(flagdoc.END) + len(flagdoc.END)]
    assert block == flagdoc.render(), "README flags are stale: run `python -m reprise.flagdoc --write README.md`"

