"""Verification of semantic candidates: each stage's decision, on examples of every kind, both languages.

Word embeddings come from a fake embedder here (the unit tier loads no weights):
words listed in ``SYNONYMS`` embed close together, every other word is far from
every other. The real embedder is exercised in tests/integration/cache.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from cache_svc.core.guard import LexicalGuard
from cache_svc.core.verify import RequestVerifier, VerifyConfig, language

pytestmark = pytest.mark.unit

# Pairs the fake embedder puts at cosine ~0.95 (as USE does for these; and for hot/cold, encrypt/decrypt).
SYNONYMS = [("fast", "quick"), ("big", "large"), ("film", "movie"), ("购买", "买"), ("hot", "cold"),
            ("encrypt", "decrypt"), ("barely", "hardly"), ("rise", "fall"), ("tight", "loose")]
# Pairs it puts at cosine ~0.6 (below the embedding bar, above the thesaurus bar), and ~0.8.
MIDDLE = [("couch", "sofa"), ("fix", "repair"), ("teach", "learn"), ("cat", "dog"), ("取消", "撤销")]
CLOSER = [("午餐", "晚餐"), ("牛肉", "猪肉")]  # as USE puts them (0.76, 0.79)


class FakeWords:
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for t in texts:
            weight, group = next(((w, f"{a}|{b}") for w, pairs in ((0.3, SYNONYMS), (0.8, MIDDLE), (0.5, CLOSER))
                                  for a, b in pairs if t in (a, b)), (0.0, t))
            base = np.random.default_rng(zlib.crc32(group.encode())).standard_normal(256)
            own = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(256)
            v = base + weight * own
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


V = RequestVerifier(FakeWords())


def serves(a: str, b: str, task: str = "chat") -> bool:
    return V.check(a, b, task) is None and V.check(b, a, task) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # surface: case, punctuation, politeness, fillers, contractions, casual spellings
        ("How do I reset my password?", "how can i reset my password"),
        ("Can you recommend a good book about history?", "Please recommend a good book about history."),
        ("I can't log into my account", "i cant log into my account"),
        ("whats the difference between affect and effect", "What is the difference between affect and effect?"),
        ("请问怎么办理护照？", "怎么办理护照"),
        ("这家店真不错", "这家店不错"),  # 真不错 is praise, not a negation
        ("能推荐一本书吗", "能不能推荐一本书"),  # an A-not-A question, not a negation
        # lexical: synonyms by word embedding, stems, irregular verbs, question-word equivalents
        ("The delivery was fast", "The delivery was quick"),
        ("Recommend a big suitcase", "Recommend a large suitcase"),
        ("怎么购买火车票", "如何买火车票"),
        ("Who wrote this novel?", "Who has written this novel?"),
        ("What time does the museum open?", "When does the museum open?"),
        # syntactic: a word moved without trading places with another around an anchor
        ("这部电影我很喜欢。", "我很喜欢这部电影。"),
        ("This laptop is fast and light.", "This laptop is light and fast."),
        ("什么是机器学习？", "机器学习是什么？"),
        ("I need a recipe for lasagna", "I need a lasagna recipe"),
        ("How do I make green tea?", "How should I make green tea?"),  # obligation unsaid in a wh-question
        ("鸡蛋要煮多长时间？", "鸡蛋需要煮多久？"),
        ("The seats were cramped but the flight was on time.", "The flight was on time, although the seats were cramped."),
        ("How do I tell if an avocado is ripe?", "How can I tell whether an avocado is ripe or not?"),  # "or not" asks
        ("非洲最高的山是哪座？", "哪座山是非洲最高的？"),
        ("The soup was barely warm", "The soup was hardly warm"),  # barely is a degree, not a negation
    ],
)
def test_serves_paraphrases(a: str, b: str) -> None:
    assert serves(a, b), (V.check(a, b, "chat"), V.check(b, a, "chat"))


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("I like this movie.", "I don't like this movie.", "negation"),
        ("我喜欢这部电影。", "我不喜欢这部电影。", "negation"),
        ("The service was fast.", "The service was slow.", "antonym"),
        ("Should the lid be tight?", "Should the lid be loose?", "unmatched"),  # an antonym no list names
        ("今天股价上涨了。", "今天股价下跌了。", "antonym"),
        ("Is it hot outside?", "Is it cold outside?", "antonym"),  # listed antonyms never stand in
        ("How do I encrypt a file?", "How do I decrypt a file?", "antonym"),  # a contrast made by prefixes
        ("Book a table for 2 people.", "Book a table for 4 people.", "number"),
        ("预订两个人的座位。", "预订四个人的座位。", "number"),
        ("What is the capital of France?", "What is the capital of Germany?", "entity"),
        ("北京今天天气怎么样？", "上海今天天气怎么样？", "entity"),
        ("How many ml in 3 cups?", "How many ml in 3 tablespoons?", "unit"),
        ("三公斤等于多少磅", "三斤等于多少磅", "unit"),
        ("What is the weather today?", "What is the weather tomorrow?", "time"),
        ("周一去健身房好吗", "周二去健身房好吗", "number"),
        ("春天适合去哪里旅游", "冬天适合去哪里旅游", "time"),
        ("Are all mushrooms poisonous?", "Are some mushrooms poisonous?", "quantifier"),
        ("Can it rain in the desert?", "Does it always rain in the desert?", "quantifier"),
        ("When does the store open?", "Where does the store open?", "question"),
        ("When did the new library open?", "When will the new library open?", "tense"),
        ("Can I take ibuprofen with coffee?", "Should I take ibuprofen with coffee?", "obligation"),
        ("这个药一定有副作用吗", "这个药可能有副作用吗", "modal"),
        ("Should I tell my landlord about the leak?", "Must I tell my landlord about the leak?", "obligation"),
        ("我的照片都上传了吗", "我的照片有上传了吗", "quantifier"),
        ("Flights to Paris", "Flights from Paris", "relation"),
        ("Recommend a laptop for travel", "Recommend a lightweight laptop for travel", "unmatched"),
        ("Give me a cookie recipe", "Give me a low-sugar cookie recipe", "unmatched"),
        ("推荐一款适合旅行的笔记本电脑", "推荐一款适合旅行的轻薄笔记本电脑", "unmatched"),
        ("Write an email to my boss", "Write an email to my landlord", "unmatched"),
        ("写一首关于猫的诗", "写一首关于狗的诗", "unmatched"),
        ("Convert miles to km", "Convert km to miles", "order"),
        ("Did Arsenal beat Chelsea?", "Did Chelsea beat Arsenal?", "order"),
        ("Is a square a rectangle?", "Is a rectangle a square?", "order"),
        ("Can I give my cat dog food?", "Can I give my dog cat food?", "order"),
        ("猫追狗", "狗追猫", "order"),
        ("我欠哥哥钱", "哥哥欠我钱", "order"),
        ("从北京到上海的火车", "从上海到北京的火车", "order"),
        ("帮我写一封房东给租客的信", "帮我写一封租客给房东的信", "order"),
        ("My brother owes me money", "I owe my brother money", "roles"),
        ("How do I say thank you in Japanese?", "日语怎么说谢谢？", "language"),
    ],
)
def test_refuses_a_different_request(a: str, b: str, why: str) -> None:
    for query, candidate in ((a, b), (b, a)):
        reason = V.check(query, candidate, "chat")
        assert reason is not None and why in reason, (query, candidate, reason)


def test_language_never_matches_across_for_any_task() -> None:
    assert "language" in (V.check("I love this phone", "我喜欢这个手机", "sentiment") or "")
    assert language("iPhone 15 的电池怎么样") == "zh"  # mostly Chinese, with a product name
    assert language("How is the iPhone 15 battery?") == "latin"
    assert language("このスマホはいいですか") == "ja"


def test_without_word_embeddings_only_exact_words_align() -> None:
    strict = RequestVerifier(None)
    assert strict.check("The delivery was fast", "The delivery was quick", "chat") is not None
    assert strict.check("How do I reset my password?", "how can i reset my password", "chat") is None


def test_synonym_bar_is_configurable() -> None:
    # At a bar above what the fake embedder gives synonyms, fast/quick no longer align.
    picky = RequestVerifier(FakeWords(), VerifyConfig(synonym_min=0.999))
    assert picky.check("The delivery was fast", "The delivery was quick", "chat") is not None


def test_guard_former_false_refusals() -> None:
    g = LexicalGuard()
    assert g.check("这家店真不错", "这家店不错") is None
    assert g.check("The soup was barely warm", "The soup was hardly warm") is None
    # 上 inside 晚上 and 下 inside 在室温下 are not the antonym pair 上/下.
    reason = g.check("晚上把黄油放在室温下", "把黄油放在室温下过夜")
    assert reason is None or "antonym" not in reason
    assert g.check("电梯上", "电梯下") is not None  # the whole words still are


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # a thesaurus vouches for words that embed only moderately close (WordNet, Cilin)
        ("Is this couch easy to clean?", "Is this sofa easy to clean?"),
        ("How do I fix a squeaky door?", "How do I repair a squeaky door?"),
        ("怎么取消自动续费", "怎么撤销自动续费"),
        # a misspelt word stands for the word it misspells
        ("recomend a good laptop for programming", "Recommend a good laptop for programming"),
        # casual spellings and fillers that are fillers only where they stand
        ("is it gonna rain tomorrow", "Is it going to rain tomorrow?"),
        ("I'd like to know how to apply for a passport", "How do I apply for a passport?"),
        ("Quick question: how do I take a screenshot on a Mac?", "How do I take a screenshot on a Mac?"),
        ("I cannot log in to my account", "I can't log in to my account"),
        ("电脑很卡怎么处理？", "电脑很卡怎么办？"),
        ("解释一下什么是通货膨胀", "什么是通货膨胀"),
        ("孩子发烧的时候可以洗澡吗", "孩子发烧可以洗澡吗"),
        # a question about a manner asks how; about a cause, why
        ("What's the way to reverse a string in JavaScript?", "How can I reverse a string in JavaScript?"),
        ("Can you tell me the steps to cancel my gym membership?", "How do I cancel my gym membership?"),
        ("冲泡绿茶的方法是什么？", "怎么冲泡绿茶？"),
        ("背英语单词有什么好办法？", "怎么背英语单词？"),
        ("What causes car brakes to squeal?", "Why do car brakes squeal?"),
        ("跑步后膝盖疼是什么原因？", "跑步后膝盖疼是怎么回事？"),
    ],
)
def test_serves_paraphrases_beyond_embeddings(a: str, b: str) -> None:
    assert serves(a, b), (V.check(a, b, "chat"), V.check(b, a, "chat"))


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        # WordNet's antonyms veto words that embed as close as synonyms (and are in no word list)
        ("Why do prices rise in winter?", "Why do prices fall in winter?", "unmatched"),
        ("How do I make my shoelaces tighter?", "How do I make my shoelaces looser?", "unmatched"),
        # a thesaurus sense too rare to count (learn's fifth sense is "teach"), and mere neighbours
        ("How can I learn Spanish quickly?", "How can I teach Spanish quickly?", "unmatched"),
        ("Is my cat too fat?", "Is my dog too fat?", "unmatched"),
        ("午餐吃什么比较健康", "晚餐吃什么比较健康", "unmatched"),  # siblings in one Cilin category
        ("牛肉怎么炖才烂", "猪肉怎么炖才烂", "unmatched"),
        # two real words one letter apart are not a typo
        ("What is the effect of caffeine on sleep?", "What is the affect of caffeine on sleep?", "unmatched"),
        ("Best dessert in the Sahara", "Best desert in the Sahara", "unmatched"),
        # a manner question still differs in what it asks about the manner
        ("What is the best way to invest $1000?", "What is the worst way to invest $1000?", "antonym"),
        ("By the way, what is the capital of Peru?", "How is the capital of Peru?", "question"),
    ],
)
def test_refuses_beyond_embeddings(a: str, b: str, why: str) -> None:
    for query, candidate in ((a, b), (b, a)):
        reason = V.check(query, candidate, "chat")
        assert reason is not None and why in reason, (query, candidate, reason)


def test_sentiment_requests_framing_one_quoted_review_are_one_request() -> None:
    review = "“The battery lasts two days and the screen is gorgeous.”"
    assert V.check(f"Is this review positive or negative: {review}", f"Classify the sentiment: {review}",
                   "sentiment") is None
    other = "“The battery lasts two hours and the screen is dim.”"
    assert V.check(f"Is this review positive or negative: {review}", f"Classify the sentiment: {other}",
                   "sentiment") is not None
    # for chat the framing is the request: the quote alone does not make two requests one
    assert V.check(f"Translate into French: {review}", f"Summarise: {review}", "chat") is not None
