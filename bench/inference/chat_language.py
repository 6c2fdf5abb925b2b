"""``python -m bench.inference.chat_language``: does a chat system prompt make the model reply in the user's language?

Runs each variant of the chat system prompt on fixed English and Chinese messages (statements,
questions, requests), greedy, one turn, and judges every reply: in the message's script (a reply is
Chinese when at least 30% of its letters are CJK ideographs), a refusal, an echo (``difflib`` ratio
of the message against the reply's start >= 0.6), a loop (a 6-character run three times); "ok" =
none of the failures. Messages come in a dev half (choose variants there, ``--split dev``) and a
held-out test half. Writes ``bench/results/inference-chat-language.json``. Exploratory, and the
served prompt is unchanged: see docs/inference.md, "Chat prompt".
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import threading
from pathlib import Path

from bench.inference import engines
from inference_svc.core import prompts
from inference_svc.core.engine import Engine
from inference_svc.core.request import ChatRequest
from reprise.domain import Decoding

#: (split, language, message). "dev": the ten messages the variants were written against (2026-11-30) and
#: ten more; "test": thirty written afterwards, before any variant ran on them, and first judged for the
#: served prompt and the variant chosen on dev only.
MESSAGES: tuple[tuple[str, str, str], ...] = (
    ("dev", "zh", "这家酒店的房间很干净，服务员也很热情，下次还会来住。"),
    ("dev", "zh", "快递三天都没到，客服电话一直打不通，太失望了。"),
    ("dev", "zh", "Python里怎么把一个列表倒过来？"),
    ("dev", "zh", "推荐几本适合初学者的机器学习书。"),
    ("dev", "zh", "今天面试没通过，有点难过。"),
    ("dev", "zh", "北京有什么好玩的地方？"),
    ("dev", "en", "The hotel room was clean and the staff were friendly."),
    ("dev", "en", "My flight was delayed five hours and nobody told us why."),
    ("dev", "en", "How do I reverse a list in Python?"),
    ("dev", "en", "Recommend a good book for learning machine learning."),
    ("dev", "zh", "我的电脑开机特别慢，有什么办法？"),
    ("dev", "zh", "昨天和朋友吵架了，心里很不舒服。"),
    ("dev", "zh", "这次旅行住的酒店非常棒，早餐也很丰盛。"),
    ("dev", "zh", "帮我给新开的咖啡店想一个名字。"),
    ("dev", "zh", "什么是机器学习？"),
    ("dev", "zh", "外卖送错了，打电话也没人接。"),
    ("dev", "en", "My computer takes forever to boot, any tips?"),
    ("dev", "en", "I had a fight with my best friend yesterday and I feel awful."),
    ("dev", "en", "Suggest a name for my new coffee shop."),
    ("dev", "en", "What is machine learning?"),
    ("test", "zh", "我家的猫最近不爱吃饭，怎么办？"),
    ("test", "zh", "今天终于拿到驾照了，太开心了！"),
    ("test", "zh", "新买的手机用了一周就黑屏了，售后还推卸责任。"),
    ("test", "zh", "周末想去杭州玩两天，有什么建议？"),
    ("test", "zh", "怎么用Excel算一列数字的平均值？"),
    ("test", "zh", "我最近总是失眠，晚上两三点才睡着。"),
    ("test", "zh", "帮我写一句祝妈妈生日快乐的话。"),
    ("test", "zh", "这本小说的结局太让人意外了，我到现在还在想。"),
    ("test", "zh", "地铁上有人大声外放视频，真让人烦。"),
    ("test", "zh", "学英语最有效的方法是什么？"),
    ("test", "zh", "我们团队的项目终于上线了，大家都很激动。"),
    ("test", "zh", "为什么天空是蓝色的？"),
    ("test", "zh", "餐厅的菜太咸了，服务员态度还很差。"),
    ("test", "zh", "给我推荐一部适合全家一起看的电影。"),
    ("test", "zh", "我下个月要搬到上海工作，有点紧张。"),
    ("test", "zh", "如何在Git里撤销上一次提交？"),
    ("test", "zh", "儿子这次数学考了满分，我很为他骄傲。"),
    ("test", "zh", "租的房子漏水，房东一直不来修。"),
    ("test", "en", "My cat has stopped eating, what should I do?"),
    ("test", "en", "I finally passed my driving test today!"),
    ("test", "en", "My new phone died after a week and support keeps blaming me."),
    ("test", "en", "What should I see in Rome if I only have two days?"),
    ("test", "en", "How do I compute the average of a column in Excel?"),
    ("test", "en", "I've been having trouble sleeping lately."),
    ("test", "en", "Write a short birthday message for my mom."),
    ("test", "en", "The restaurant food was far too salty and the waiter was rude."),
    ("test", "en", "Why is the sky blue?"),
    ("test", "en", "Our team's project finally launched and everyone is thrilled."),
    ("test", "en", "How do I undo the last commit in Git?"),
    ("test", "en", "I'm moving to a new city for work next month and I'm nervous."),
)
VARIANTS = {
    "served": prompts.CHAT_SYSTEM_PROMPT,
    "served + Chinese sentence": prompts.CHAT_SYSTEM_PROMPT + " 如果用户用中文写，请用中文回答。",
    "same-language instruction": prompts.CHAT_SYSTEM_PROMPT.replace(" and in their language.", ".")
    + " Always reply in the language of the user's message: Chinese (中文) to Chinese, English to English.",
    "bilingual (served + Chinese translation)": prompts.CHAT_SYSTEM_PROMPT
    + "\n你是 Reprise，一个简洁、有帮助的助手。简短地回答问题。用户讲述经历时，直接对他们说话，表达同理心或给出建议，一两句话即可。用户用中文写时用中文回答。",
    # Written after the first dev run: the ("you") cue opens replies with "You're welcome!" or "你，".
    "no (you) + Chinese sentence": prompts.CHAT_SYSTEM_PROMPT.replace(' directly ("you"),', "") + " 用户用中文写时，用中文回答。",
    "language first": "You are Reprise, a concise and helpful assistant. Reply in the user's language: 中文消息用中文回答, "
    "English messages in English. Answer questions briefly. If the user tells you about an experience, respond with "
    "empathy or advice in one or two sentences.",
    "served + short Chinese sentence": prompts.CHAT_SYSTEM_PROMPT + " 用户用中文写时，用中文回答。",
}


def cjk_share(text: str) -> float:
    """Share of the letters that are CJK ideographs (0 for no letters)."""
    letters = [c for c in text if c.isalpha()]
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / max(1, len(letters))


#: A reply that declines the request (the 0.5B model sometimes refuses a harmless complaint).
REFUSAL = re.compile(r"无法(协助|帮助|提供|完成|回答)|不能(协助|帮助|回答)|I can(not|'t) (help|assist)|I'm (sorry|afraid),? but I can", re.I)
#: A reply whose start repeats this much of the message (difflib ratio) counts as an echo.
ECHO = 0.6


def judge(lang: str, text: str, reply: str) -> dict:
    same = (cjk_share(reply) > 0.3) == (lang == "zh")
    echo = round(difflib.SequenceMatcher(None, text, reply[: len(text)]).ratio(), 3)
    refusal = bool(REFUSAL.search(reply))
    loop = any(reply.count(reply[i : i + 6]) >= 3 for i in range(max(0, len(reply) - 6)) if reply[i : i + 6].strip())
    return {"same_language": same, "refusal": refusal, "loop": loop, "echo": echo, "ok": same and not (refusal or loop) and echo < ECHO}


def summarize(replies: list[dict]) -> dict:
    """Per language: replies in the message's script, refusals, echoes (ratio >= ECHO), all three fine; mean echo."""
    out: dict = {}
    for lang in ("zh", "en"):
        mine = [r for r in replies if r["lang"] == lang]
        n = len(mine)
        out[lang] = {
            "same_language": f"{sum(r['same_language'] for r in mine)}/{n}",
            "refusals": sum(r["refusal"] for r in mine),
            "echoes": sum(r["echo"] >= ECHO for r in mine),
            "loops": sum(r["loop"] for r in mine),
            "ok": f"{sum(r['ok'] for r in mine)}/{n}",
        }
    out["mean_echo"] = round(sum(r["echo"] for r in replies) / max(1, len(replies)), 3)
    return out


def run_variant(engine: Engine, system: str, max_new_tokens: int, splits: tuple[str, ...]) -> dict:
    replies = []
    for split, lang, text in (m for m in MESSAGES if m[0] in splits):
        chat = ChatRequest(text, system_prompt=system, decoding=Decoding(max_new_tokens=max_new_tokens))
        reply = "".join(c.delta for c in engine.chat(chat, threading.Event(), remember=False))
        replies.append({"split": split, "lang": lang, "message": text, "reply": reply, **judge(lang, text, reply)})
    return {split: summarize([r for r in replies if r["split"] == split]) for split in splits} | {"replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.chat_language", description=__doc__)
    engines.add_model_cache(parser)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--split", choices=("dev", "test", "both"), default="both", help="choose variants on dev alone")
    parser.add_argument("--variant", action="append", help="only these variants (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=engines.RESULTS / "inference-chat-language.json")
    args = parser.parse_args()
    engine = engines.serving_engine(args.model_cache)
    splits = ("dev", "test") if args.split == "both" else (args.split,)
    rows = {}
    for name, system in VARIANTS.items():
        if args.variant and name not in args.variant:
            continue
        rows[name] = {"system": system, **run_variant(engine, system, args.max_new_tokens, splits)}
        print(name, *(f"\n  {split} {rows[name][split]}" for split in splits), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_new_tokens": args.max_new_tokens, "variants": rows}, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
