"""The curated thesauri behind verification: WordNet 3.0 (English) and Cilin (Chinese), real data."""

from __future__ import annotations

import pytest

from cache_svc.core import thesaurus

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("x", "y"), [("couch", "sofa"), ("fix", "repair"), ("cheap", "inexpensive"),
                                      ("quickest", "fastest"), ("begin", "start"), ("取消", "撤销"), ("好看", "漂亮")])
def test_synonyms(x: str, y: str) -> None:
    assert thesaurus.synonyms(x, y) and thesaurus.synonyms(y, x)


@pytest.mark.parametrize(("x", "y"), [("learn", "teach"), ("cat", "dog"), ("rise", "fall"), ("buy", "sell"),
                                      ("北京", "上海"), ("升温", "降温"), ("买", "卖")])
def test_not_synonyms(x: str, y: str) -> None:
    assert not thesaurus.synonyms(x, y)


@pytest.mark.parametrize(("x", "y"), [("rise", "fall"), ("tight", "loose"), ("tighter", "looser"), ("borrow", "lend"),
                                      ("hire", "fire"), ("husband", "wife"), ("early", "late")])
def test_antonyms_in_any_sense_and_form(x: str, y: str) -> None:
    assert thesaurus.antonyms(x, y) and thesaurus.antonyms(y, x)
    assert not thesaurus.synonyms(x, y)


def test_no_antonyms_among_synonyms_or_strangers() -> None:
    assert not thesaurus.antonyms("fix", "repair")
    assert not thesaurus.antonyms("cat", "dog")
    assert not thesaurus.antonyms("升温", "降温")  # Chinese antonyms are the word lists' business


def test_cilin_siblings_are_not_synonyms() -> None:
    # One Cilin category holds co-hyponyms: only its "=" groups count.
    for x, y in (("早餐", "午餐"), ("午餐", "晚餐"), ("牛肉", "猪肉"), ("维修", "修理")):
        assert not thesaurus.synonyms(x, y), (x, y)


@pytest.mark.parametrize(("x", "y", "typo"), [
    ("recomend", "recommend", True), ("dissapointed", "disappointed", True), ("subscripton", "subscription", True),
    ("affect", "effect", False),  # both words
    ("desert", "dessert", False), ("loose", "lose", False), ("diffrence", "differences", True),  # two edits: long words
    ("diferent", "different", True), ("difrent", "different", False),  # two edits: too many for a short word
    ("cat", "cta", False),  # too short to tell
])
def test_typos_are_non_words_one_edit_from_a_word(x: str, y: str, typo: bool) -> None:
    assert thesaurus.typo(x, y) is typo and thesaurus.typo(y, x) is typo


def test_edit_distance_counts_adjacent_swaps_once() -> None:
    assert thesaurus.edit_distance("form", "from") == 1
    assert thesaurus.edit_distance("kitten", "sitting") == 3
    assert thesaurus.edit_distance("", "abc") == 3
