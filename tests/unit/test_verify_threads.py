"""Verification runs in worker threads (``asyncio.to_thread``), many lookups at once: it must not share
mutable state between them. A burst of 50 semantic lookups once returned INTERNAL from a shared Snowball
stemmer (``IndexError: string index out of range`` inside ``stemWord``)."""

from __future__ import annotations

import sys
import threading

import pytest

from cache_svc.core.verify import RequestVerifier

PAIRS = [
    ("how do I reset my router settings", "how can I reset the settings of my router"),
    ("what are the opening hours of the museum", "when is the museum open"),
    ("recommendations for a lightweight travelling laptop", "suggest a light laptop for travelling"),
    ("explain the differences between classification and regression", "what distinguishes regression from classification"),
    ("translate the following sentences into french", "translate these sentences to french"),
    ("organizational strategies for remembering vocabulary", "strategies to remember vocabulary organizationally"),
    ("怎么把路由器恢复出厂设置", "路由器如何恢复出厂设置"),
    ("推荐一款适合旅行的轻薄笔记本", "适合旅行用的轻薄笔记本有什么推荐"),
]


@pytest.fixture
def tiny_switch_interval():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads trade the GIL as often as the interpreter allows
    yield
    sys.setswitchinterval(old)


def test_concurrent_checks_give_the_answers_of_sequential_ones(tiny_switch_interval) -> None:
    verifier = RequestVerifier()
    expected = {pair: verifier.check(*pair, "chat") for pair in PAIRS}
    errors: list[BaseException] = []
    wrong: list[tuple[str, str]] = []

    def run() -> None:
        try:
            for _ in range(40):
                for pair in PAIRS:
                    if verifier.check(*pair, "chat") != expected[pair]:
                        wrong.append(pair)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert not wrong
