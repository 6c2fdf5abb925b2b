"""``python -m bench.inference.chat_language``: does a chat system prompt make the model reply in the user's language?

Runs each variant of the chat system prompt on a fixed set of English and Chinese messages
(statements and questions), greedy, one turn, and counts replies in the message's script (a
reply is Chinese when at least 30% of its letters are CJK ideographs), plus how much of each
reply repeats the message (``difflib`` ratio of the message against the reply's start; 1.0 =
verbatim echo). Writes ``bench/results/inference-chat-language.json``. Exploratory: ten
messages cannot justify a new served prompt (which invalidates every cached reply); see
docs/inference.md, "Chat prompt".
"""

from __future__ import annotations

import argparse
import difflib
import json
import threading
from pathlib import Path

from inference_svc.core import placement, prompts
from inference_svc.core.engine import Engine, EngineConfig
from reprise.domain import Decoding

ROOT = Path(__file__).resolve().parents[2]
MESSAGES: tuple[tuple[str, str], ...] = (
    ("zh", "这家酒店的房间很干净，服务员也很热情，下次还会来住。"),
    ("zh", "快递三天都没到，客服电话一直打不通，太失望了。"),
    ("zh", "Python里怎么把一个列表倒过来？"),
    ("zh", "推荐几本适合初学者的机器学习书。"),
    ("zh", "今天面试没通过，有点难过。"),
    ("zh", "北京有什么好玩的地方？"),
    ("en", "The hotel room was clean and the staff were friendly."),
    ("en", "My flight was delayed five hours and nobody told us why."),
    ("en", "How do I reverse a list in Python?"),
    ("en", "Recommend a good book for learning machine learning."),
)
VARIANTS = {
    "served": prompts.CHAT_SYSTEM_PROMPT,
    "served + Chinese sentence": prompts.CHAT_SYSTEM_PROMPT + " 如果用户用中文写，请用中文回答。",
    "same-language instruction": prompts.CHAT_SYSTEM_PROMPT.replace(" and in their language.", ".")
    + " Always reply in the language of the user's message: Chinese (中文) to Chinese, English to English.",
    "bilingual (served + Chinese translation)": prompts.CHAT_SYSTEM_PROMPT
    + "\n你是 Reprise，一个简洁、有帮助的助手。简短地回答问题。用户讲述经历时，直接对他们说话，表达同理心或给出建议，一两句话即可。用户用中文写时用中文回答。",
}


def cjk_share(text: str) -> float:
    """Share of the letters that are CJK ideographs (0 for no letters)."""
    letters = [c for c in text if c.isalpha()]
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / max(1, len(letters))


def run_variant(engine: Engine, system: str, max_new_tokens: int) -> dict:
    replies = []
    for lang, text in MESSAGES:
        reply = "".join(
            c.delta for c in engine.chat((), text, system, Decoding(max_new_tokens=max_new_tokens), threading.Event(), remember=False)
        )
        replies.append(
            {
                "lang": lang,
                "message": text,
                "reply": reply,
                "same_language": (cjk_share(reply) > 0.3) == (lang == "zh"),
                "echo": round(difflib.SequenceMatcher(None, text, reply[: len(text)]).ratio(), 3),
            }
        )
    per_lang = {
        lang: f"{sum(r['same_language'] for r in replies if r['lang'] == lang)}/{sum(r['lang'] == lang for r in replies)}"
        for lang in ("zh", "en")
    }
    return {"same_language": per_lang, "mean_echo": round(sum(r["echo"] for r in replies) / len(replies), 3), "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.chat_language", description=__doc__)
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".models")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inference-chat-language.json")
    args = parser.parse_args()
    placement.apply("")
    engine = Engine(EngineConfig(cache_dir=args.model_cache))
    engine.load()
    rows = {}
    for name, system in VARIANTS.items():
        rows[name] = {"system": system, **run_variant(engine, system, args.max_new_tokens)}
        print(f"{name}: same language {rows[name]['same_language']}, mean echo {rows[name]['mean_echo']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_new_tokens": args.max_new_tokens, "variants": rows}, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
