"""The prompts that turn one chat model into several tasks.

The system prompts (and the sentiment few-shot examples) are static, so
their KV is computed once at start and every request continues from it:
examples in the prompt cost memory, not time.

Every string a caller sends (text, history, system prompt) is tokenized as
plain text: ``<|im_end|>`` typed by a user is ten characters, never the
control token that ends a turn (see :func:`encode_plain`). Only the chat
template's own markup is tokenized with its control tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference_svc.core.request import ChatRequest
from reprise.domain import Label, Role
from reprise.errors import InvalidArgument


@dataclass(frozen=True)
class SentimentPrompt:
    """How sentiment is asked and scored.

    The label is read from the next-token logits after the chat template's
    assistant header: each label's score is the log-sum-exp of the logits of
    the first tokens of its ``label_words``, and
    ``P(positive) = sigmoid(score_pos - score_neg - bias)``. ``bias`` is a
    calibration constant fitted on a development split (see
    ``bench/inference/sentiment_tune.py``); it corrects the model's prior
    towards one label.
    """

    system: str
    #: Few-shot (text, label) turns placed after the system prompt, inside the cached prefix.
    examples: tuple[tuple[str, Label], ...] = ()
    label_words: dict[Label, tuple[str, ...]] = field(
        default_factory=lambda: {Label.POSITIVE: ("Positive",), Label.NEGATIVE: ("Negative",)}
    )
    bias: float = 0.0
    #: Calibration for texts written mostly in CJK characters (the model's prior differs by language);
    #: ``None`` uses ``bias``.
    bias_cjk: float | None = None
    #: The user message around the text (``{text}``). A question helps small models; put before the text,
    #: it is part of the cached prefix and costs no request time.
    user_template: str = "{text}"

    def bias_for(self, text: str) -> float:
        if self.bias_cjk is not None and is_mostly_cjk(text):
            return self.bias_cjk
        return self.bias

    def user(self, text: str) -> str:
        return self.user_template.replace("{text}", text)

    def answer(self, label: Label) -> str:
        return self.label_words[label][0]


def is_mostly_cjk(text: str) -> bool:
    """True when at least 30% of the letters are CJK ideographs (a cheap, model-free language check)."""
    letters = [c for c in text if c.isalpha()]
    cjk = sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in letters)
    return bool(letters) and cjk >= 0.3 * len(letters)


#: Written for this prompt (not taken from any evaluation set): both languages, mixed reviews,
#: a sarcastic complaint and a polite one, so the model sees the cases it gets wrong zero-shot.
FEW_SHOT: tuple[tuple[str, Label], ...] = (
    ("Thanks for the quick rebooking, the crew was lovely!", Label.POSITIVE),
    ("这家酒店房间太小，空调还坏了，前台态度也很差。", Label.NEGATIVE),
    ("Been on hold for two hours now. Great service, as always...", Label.NEGATIVE),
    ("价格有点贵，但是质量确实很好，总体满意。", Label.POSITIVE),
    ("外观不错，可惜用了两天就坏了，很失望。", Label.NEGATIVE),
    ("Not bad at all, the seats were comfier than I expected.", Label.POSITIVE),
    ("Flight delayed again and nobody tells us anything.", Label.NEGATIVE),
    ("书的内容很充实，物流也快，值得购买。", Label.POSITIVE),
)

#: Demonstrations of each hard case in both directions and both languages (issue 23; written for this prompt,
#: not taken from any evaluation set): negated negatives and negated positives, contrast, slang and emoji,
#: and sarcasm (mock praise of a failure, mock complaints about something too good).
HARD_CASES: tuple[tuple[str, Label], ...] = (
    # negated negatives, both ways
    ("Two years of daily use and it has never let me down.", Label.POSITIVE),
    ("插上就能用，一点都不麻烦，没什么可挑剔的。", Label.POSITIVE),
    ("No problems with the checkout; the problem is the shoes fell apart in a week.", Label.NEGATIVE),
    ("不是快递的问题，是东西本身就有毛病，用不了。", Label.NEGATIVE),
    # negated positives, both ways
    ("Not impressed. The sound is thin and the app keeps disconnecting.", Label.NEGATIVE),
    ("这款耳机没有想象的那么好，戴久了耳朵疼。", Label.NEGATIVE),
    ("I honestly couldn't ask for a better landlord.", Label.POSITIVE),
    ("再也找不到比这家更好吃的面馆了。", Label.POSITIVE),
    # contrast, both ways
    ("The wait was long, but the food was worth it and we'll be back.", Label.POSITIVE),
    ("虽然价格偏高，但是做工和售后都很好，值得。", Label.POSITIVE),
    ("Gorgeous design, however it overheats and shuts down every evening.", Label.NEGATIVE),
    ("颜值很高，可惜续航太差，半天就没电了。", Label.NEGATIVE),
    # slang and emoji, both ways
    ("ngl this hoodie is fire 🔥 wearing it every day", Label.POSITIVE),
    ("这个面包真香，回购无数次了😋", Label.POSITIVE),
    ("the sequel was mid, kinda boring tbh 😴", Label.NEGATIVE),
    ("这家店踩雷了，大家拔草吧💩", Label.NEGATIVE),
    # sarcasm: mock praise of a failure, mock complaints about something too good
    ("Oh perfect, my 'unbreakable' phone case cracked the first time I dropped it. Great job.", Label.NEGATIVE),
    ("真是“优质”服务，打了五次电话都没人接。", Label.NEGATIVE),
    ("This candle is a menace, my whole flat smells too good to leave 😂", Label.POSITIVE),
    ("这家烤肉太过分了，好吃到我停不下来。", Label.POSITIVE),
    ("Fantastic, the 'express' train was two hours late again. Love it.", Label.NEGATIVE),
    ("服务员全程玩手机，真是宾至如归啊。", Label.NEGATIVE),
    ("Ugh, this series ate my whole weekend, I couldn't stop watching 😩❤️", Label.POSITIVE),
    ("这款面霜害我被同事追着问用了什么，烦死了哈哈。", Label.POSITIVE),
)

#: Chosen on the dev split (``python -m bench.inference.sentiment_hard --tune``, docs/inference.md "Clean texts
#: and hard cases"): an instruction that names sarcasm, the eight general examples and the hard cases. Its
#: 1,233-token prefix (the 314-token one before) is computed once; each request still runs only its own text.
SENTIMENT = SentimentPrompt(
    system=(
        "You are a sentiment classifier. Read the user's text (English or Chinese) and decide whether the writer is, "
        "overall, pleased (Positive) or displeased (Negative). Judge by what actually happened, not by the tone "
        "words: sarcastic praise of a failure (\"Great, it broke again\", 真是\"好\"服务) is Negative; a joking "
        "complaint about something too good (\"I hate how good this is\", 好吃到停不下来) is Positive. Answer with "
        "exactly one word: Positive or Negative."
    ),
    examples=FEW_SHOT + HARD_CASES,
    # The question comes before the text, so it is part of the cached prefix: a request runs only its
    # text and the 5-token template tail instead of 16 tokens.
    user_template="Is the sentiment of this text Positive or Negative?\n\n{text}",
    # Fitted on both dev sets at once (the mean of the corpus dev accuracy and the labelled dev accuracy, clean and
    # hard texts pooled; int4 weights with int8 activations), the middle of the best range: English 1.01-1.05,
    # Chinese 0.96-1.01. Fitted on the labelled set alone (0.3 / 0.9) it lost 8 points on the corpus's English.
    bias=1.03,
    bias_cjk=0.985,
)

#: Issue 23 found the earlier wording ("If the user tells you about an experience, reply to them directly
#: ("you"), with empathy or advice") refusing writing requests or answering them with advice, opening a
#: product review with "You're welcome!", and once replying with the prompt itself; its Chinese replies ran
#: to the token limit. This one asks for the text itself, short replies, and the user's language
#: (docs/inference.md, "Chat prompt"; measured by make bench-chat).
CHAT_SYSTEM_PROMPT = (
    "You are Reprise, a helpful assistant. Do what the user asks. When asked to write something (a message, "
    "a review, a poem, a story, a reply to a customer), write the text itself, ready to use. Answer questions "
    "clearly. Keep replies short, a few sentences, unless asked for more. Reply in the language the user writes in."
)


#: How label probabilities are computed from the model; part of ``revision``. Bump it when the
#: computation changes answers. 2: label logits in fp32 (1 rounded them to bf16, steps of 0.125).
SCORING_VERSION = 2


def revision(
    sentiment: SentimentPrompt, chat_system_prompt: str, decoding_defaults: dict[str, float | int] | None = None
) -> str:
    """A short digest of the built-in prompts: answers made under other prompts are other answers.

    The gateway puts it into every cache key next to the weights' revision, so
    an upgrade that changes a prompt (or its calibration) never serves replies
    or labels computed under the old one. ``decoding_defaults``: the model's
    generation-config defaults in force (:func:`.generation.describe`); none
    leaves the digest as it was before they existed.
    """
    extra = {"decoding_defaults": decoding_defaults} if decoding_defaults else {}
    canonical = json.dumps(
        {
            **extra,
            "sentiment": {
                "system": sentiment.system,
                "examples": [[text, label.name] for text, label in sentiment.examples],
                "label_words": {label.name: list(words) for label, words in sentiment.label_words.items()},
                "bias": sentiment.bias,
                "bias_cjk": sentiment.bias_cjk,
                "user_template": sentiment.user_template,
                "scoring": SCORING_VERSION,
            },
            "chat_system_prompt": chat_system_prompt,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# -- tokenization: caller strings are plain text ------------------------------------------------

#: Stands in for a message's content while the chat template renders; NUL is in no template or role name.
_SLOT = "\x00reprise-slot-{}\x00"
_SLOT_RE = re.compile("\x00reprise-slot-(\\d+)\x00")


def _unsplit_literals(tokenizer: Any) -> tuple[str, ...]:
    """Added tokens that ``split_special_tokens`` leaves matched: those not flagged special.

    Qwen2.5 adds ``<tool_call>``, ``<|fim_prefix|>`` and others as non-special added tokens;
    the tokenizer still turns their spelling into the single token.
    """
    return tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.content and not t.special)


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` read as plain text: no control token can come out of it.

    Special tokens are split by the tokenizer (``split_special_tokens``); the
    spelling of any other added token is cut after its first character, so it
    is encoded as ordinary pieces. Text without such spellings (all real
    traffic) tokenizes exactly as before.
    """
    found = [lit for lit in _unsplit_literals(tokenizer) if lit in text]
    cuts = sorted({m.start() + 1 for lit in found for m in re.finditer(f"(?={re.escape(lit)})", text)})
    ids: list[int] = []
    for start, end in zip([0, *cuts], [*cuts, len(text)]):
        ids += tokenizer.encode(text[start:end], add_special_tokens=False, split_special_tokens=True)
    return ids


def template_ids(tokenizer: Any, messages: Sequence[dict[str, str]], generation: bool) -> tuple[list[int], list[int]]:
    """The chat template's ids for ``messages``, each content encoded with :func:`encode_plain`.

    The template renders with a slot in place of every content; the markup
    between slots is encoded with its control tokens, the contents as plain
    text. Returns the ids and, per message, how many of them its content is
    (to name the field that overflows the context).
    """
    slotted = [{**m, "content": _SLOT.format(i)} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(slotted, add_generation_prompt=generation, tokenize=False)
    parts = _SLOT_RE.split(rendered)  # markup, index, markup, index, ..., markup
    ids: list[int] = list(tokenizer.encode(parts[0], add_special_tokens=False))
    sizes = [0] * len(messages)
    for at in range(1, len(parts), 2):
        i = int(parts[at])
        content = encode_plain(tokenizer, messages[i]["content"])
        ids += content
        sizes[i] += len(content)
        ids += tokenizer.encode(parts[at + 1], add_special_tokens=False)
    return ids, sizes


def turn_end_id(tokenizer: Any) -> int | None:
    """The control token the chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>``), read from the template itself; ``None`` when it closes with plain text or fails."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SLOT.format(0)}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 (a template may refuse this shape; then configs alone name the end)
        return None
    after = _SLOT_RE.split(rendered)[-1] if _SLOT_RE.search(rendered) else ""
    ids = tokenizer.encode(after, add_special_tokens=False)[:1]
    control = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in control else None


@dataclass(frozen=True)
class ChatPrompt:
    """A chat request's prompt ids and the size of its parts, to say which one is too long."""

    ids: list[int]
    system_tokens: int
    text_tokens: int
    #: False when the service's default system prompt is used (the caller cannot shorten it).
    custom_system: bool

    def too_long(self, limit: int) -> InvalidArgument:
        """The error for a prompt of ``limit`` ids or more, naming the field to shorten.

        The new text is blamed only when the conversation would fit without it;
        otherwise the system prompt (when the caller sent one that alone is too
        long) or the history is.
        """
        n, most = len(self.ids), limit - 1
        if n - self.text_tokens < limit:
            return InvalidArgument("text", f"the conversation is {n} tokens; the limit is {most}")
        if self.custom_system and self.system_tokens >= most:
            return InvalidArgument("system_prompt", f"is {self.system_tokens} tokens; the limit is {most}")
        return InvalidArgument(
            "history", f"the conversation is {n - self.text_tokens} tokens without the new text; the limit is {most}"
        )


def chat_prompt(tokenizer: Any, request: ChatRequest, default_system: str) -> ChatPrompt:
    """The prompt of one chat turn: system, history, the new user text, then the reply's header.

    Text only: ``request.pictures`` are placed by :func:`.vision_prompt.chat_prompt`.
    """
    messages = [{"role": "system", "content": request.system_prompt or default_system}]
    messages += [{"role": "user" if t.role is Role.USER else "assistant", "content": t.content} for t in request.history]
    messages.append({"role": "user", "content": request.text})
    ids, sizes = template_ids(tokenizer, messages, generation=True)
    return ChatPrompt(ids, sizes[0], sizes[-1], bool(request.system_prompt))
