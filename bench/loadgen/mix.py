"""The request mixes behind ``deploy/ghz/*.json``: exact repeats, paraphrases and new texts.

``python -m bench.loadgen.mix`` (``make ghz-configs``) writes the configs; a
test checks the committed files equal what this module generates.

One data array holds ``size`` requests (50 by default) in a fixed, seeded order:

* **new** (38%): a text's first appearance in the array;
* **exact repeats** (42%): a text that appeared earlier in the array, popular
  texts more often (Zipf-like weights);
* **paraphrases** (20%): a rewording of a text that appeared earlier.

ghz sends the array round-robin and starts again at the end, so those shares
hold for the **first pass only**: from the second pass on every request
repeats one already seen (paraphrases included). A run of ``total`` requests
therefore computes at most ``distinct texts`` answers; its repeat share grows
with ``total / size``. The ``*-stationary`` configs keep the shares for a
whole run instead: their new texts carry ``{{.RequestNumber}}`` and are unique
per request, so 38% of requests stay misses forever (and paraphrases become
exact repeats after their first pass). Reports carry the hit ratio per pass.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GHZ_DIR = ROOT / "deploy" / "ghz"
SIZE = 50
SHARES = {"new": 0.38, "repeat": 0.42, "paraphrase": 0.20}
SEED = 20241122

# (original, paraphrase or None): product reviews in English and Chinese, both labels.
REVIEWS: tuple[tuple[str, str | None], ...] = (
    ("I love this phone, the battery lasts all day!", "This phone's battery easily lasts a whole day, I love it."),
    ("The delivery was late and the box arrived crushed.", "My parcel came late and the box was crushed."),
    ("这家餐厅的菜太难吃了，服务也很差。", "这家餐厅的饭菜很难吃，服务也不好。"),
    ("Great value for the money, would buy again.", "Worth every penny; I would purchase it again."),
    ("The screen cracked after two days of normal use.", "After only two days of ordinary use the screen cracked."),
    ("质量很好，物流也很快，非常满意！", "东西质量不错，快递也快，很满意。"),
    ("Customer support never answered my emails.", "Nobody from customer service ever replied to my emails."),
    ("The headphones are comfortable and sound amazing.", "These headphones sound fantastic and are comfortable to wear."),
    ("衣服尺码偏小，面料也很粗糙。", "衣服尺寸偏小，布料摸起来很粗糙。"),
    ("Setup took five minutes and everything just worked.", "It took five minutes to set up and it all worked right away."),
    ("The coffee maker leaks water all over the counter.", None),
    ("手机用了一个月就坏了，再也不买了。", None),
    ("Fast shipping and the seller was very friendly.", None),
    ("The app crashes every time I open the camera.", None),
    ("房间干净整洁，前台服务热情周到。", None),
    ("Terrible battery life, it barely lasts four hours.", None),
    ("The blender is powerful and easy to clean.", None),
    ("快递太慢了，等了整整两个星期。", None),
    ("The hotel room was spotless and the staff were kind.", None),
)

# Questions for the chat RPCs, with paraphrases.
QUESTIONS: tuple[tuple[str, str | None], ...] = (
    ("What is a cache, in one sentence?", "In one sentence, what is a cache?"),
    ("How do I reverse a list in Python?", "What is the way to reverse a Python list?"),
    ("什么是缓存？请用一句话回答。", "请用一句话解释什么是缓存。"),
    ("What does HTTP status 404 mean?", "What is the meaning of the HTTP 404 status code?"),
    ("Explain what a mutex is.", "Can you explain what a mutex is?"),
    ("如何在Python中读取一个文件？", "Python里怎么读取文件？"),
    ("What is the difference between a process and a thread?", "How does a thread differ from a process?"),
    ("Give me a tip for writing clean code.", "Share one tip for writing clean code."),
    ("What is gRPC?", "Can you tell me what gRPC is?"),
    ("How do I sort a dictionary by value in Python?", "How can a Python dict be sorted by its values?"),
    ("What is a hash function?", None),
    ("为什么要使用版本控制？", None),
    ("What is Kubernetes used for?", None),
    ("How does a binary search work?", None),
    ("What is the capital of France?", None),
    ("解释一下什么是递归。", None),
    ("What is a REST API?", None),
    ("How do I create a virtual environment in Python?", None),
    ("What is the purpose of a load balancer?", None),
)


@dataclass(frozen=True)
class Item:
    kind: str  # "new" | "repeat" | "paraphrase"
    text: str
    #: Index of the original in the corpus.
    source: int


def counts(size: int = SIZE) -> dict[str, int]:
    """Exact item counts per kind for an array of ``size`` (shares rounded, new takes the rest)."""
    repeat = round(size * SHARES["repeat"])
    paraphrase = round(size * SHARES["paraphrase"])
    return {"new": size - repeat - paraphrase, "repeat": repeat, "paraphrase": paraphrase}


def build_mix(corpus: Sequence[tuple[str, str | None]], size: int = SIZE, seed: int = SEED) -> list[Item]:
    """A data array of ``size`` items with the documented shares, deterministic for a seed."""
    want = counts(size)
    if want["new"] > len(corpus) or want["paraphrase"] > sum(p is not None for _, p in corpus):
        raise ValueError("corpus too small for this size")
    rng = random.Random(seed)
    for _ in range(10_000):
        kinds = ["new"] * want["new"] + ["repeat"] * want["repeat"] + ["paraphrase"] * want["paraphrase"]
        rng.shuffle(kinds)
        items = _fill(kinds, corpus, want["new"], rng)
        if items is not None:
            return items
    raise RuntimeError("could not order the mix")  # pragma: no cover - 10k shuffles always suffice


def _fill(kinds: list[str], corpus: Sequence[tuple[str, str | None]], n_new: int, rng: random.Random) -> list[Item] | None:
    """Assign texts to a sequence of kinds; None when the order is impossible."""
    # Originals with paraphrases come first in the corpus; use them first so every paraphrase has one.
    originals = list(range(n_new))
    introduced: list[int] = []
    paraphrased: set[int] = set()
    items: list[Item] = []
    for kind in kinds:
        if kind == "new":
            src = originals[len(introduced)]
            introduced.append(src)
            items.append(Item("new", corpus[src][0], src))
        elif kind == "repeat":
            if not introduced:
                return None
            # Zipf-like popularity: the earlier a text was introduced, the more it repeats.
            weights = [1 / (rank + 1) for rank in range(len(introduced))]
            src = rng.choices(introduced, weights)[0]
            items.append(Item("repeat", corpus[src][0], src))
        else:
            candidates = [s for s in introduced if corpus[s][1] is not None and s not in paraphrased]
            if not candidates:
                return None
            src = rng.choice(candidates)
            paraphrased.add(src)
            items.append(Item("paraphrase", corpus[src][1], src))  # type: ignore[arg-type]
    return items


def stationary(items: Sequence[Item]) -> list[Item]:
    """The same mix with every new text made unique per request (ghz template)."""
    return [Item(i.kind, f"{i.text} (#{{{{.RequestNumber}}}})", i.source) if i.kind == "new" else i for i in items]


def _config(call: str, items: Sequence[Item], *, concurrency: int, total: int, timeout: str,
            extra: dict[str, Any] | None = None, comment: str) -> dict[str, Any]:
    data = [{"text": i.text, **(extra or {})} for i in items]
    shares = {k: sum(i.kind == k for i in items) / len(items) for k in SHARES}
    return {
        "$comment": comment + (f" Shares in one pass over data: new {shares['new']:.0%}, exact repeats "
                               f"{shares['repeat']:.0%}, paraphrases {shares['paraphrase']:.0%}. "
                               "Generated by `make ghz-configs` (bench/loadgen/mix.py); see docs/deploy.md."),
        "call": call,
        "host": "127.0.0.1:50050",
        "insecure": True,
        "total": total,
        "concurrency": concurrency,
        "connections": 4,
        "skipFirst": concurrency,
        "count-errors": True,
        "timeout": timeout,
        "metadata": {"x-request-id": "ghz-{{.RequestNumber}}"},
        "data": data,
    }


CHAT_DECODING = {"decoding": {"max_new_tokens": 32}}


def configs() -> dict[str, dict[str, Any]]:
    """File name -> ghz config, for every gateway RPC."""
    reviews = build_mix(REVIEWS)
    questions = build_mix(QUESTIONS, seed=SEED + 1)
    gw = "reprise.gateway.v1.Gateway"
    return {
        "classify.json": _config(f"{gw}.Classify", reviews, concurrency=16, total=500, timeout="20s",
                                 comment="Sentiment of product reviews (en + zh)."),
        "classify-stationary.json": _config(f"{gw}.Classify", stationary(reviews), concurrency=16, total=500,
                                            timeout="20s", comment="Like classify.json, but every new text is "
                                            "unique per request ({{.RequestNumber}}), so the new share holds "
                                            "for the whole run."),
        "chat.json": _config(f"{gw}.Chat", questions, concurrency=4, total=200, timeout="120s",
                             extra=CHAT_DECODING, comment="One-turn chat questions (en + zh), 32 new tokens at most."),
        "chat-stream.json": _config(f"{gw}.ChatStream", questions, concurrency=4, total=200, timeout="120s",
                                    extra=CHAT_DECODING, comment="chat.json's questions, streamed; the report's "
                                    "latency is the whole stream, reprise.firstMessageLatencyDistribution the "
                                    "time to the first chunk."),
        "analyze.json": _config(f"{gw}.Analyze", reviews, concurrency=4, total=200, timeout="120s",
                                extra=CHAT_DECODING, comment="Sentiment + reply for product reviews."),
    }


def render(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen.mix", description="Write deploy/ghz/*.json.")
    parser.add_argument("--out", type=Path, default=GHZ_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, config in configs().items():
        (args.out / name).write_text(render(config))
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
