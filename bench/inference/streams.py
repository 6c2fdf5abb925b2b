"""N greedy chats at once, measured the same way for Reprise and for its peer (issue 25).

A :data:`Chat` sends one streamed greedy chat and returns a :class:`Reply`: its completion tokens and
the arrival time of every streamed piece. :func:`measure` runs each level (N distinct chats at once,
``rounds`` times) and reports two rates per level, medians over rounds:

- **end to end**: completion tokens of all replies / wall time from the first request sent to the
  last reply back. Prefill of all N prompts is inside it.
- **steady decode**: pieces that arrived while all N streams were decoding (from the moment the last
  stream got its first piece to the moment the first stream got its last) / that window. It is what
  "aggregate decode" means for a batch of N rows: no prompt is being prefilled and no stream has
  ended. A piece is one token for both servers here (English replies, one piece per token streamed;
  a token that completes no character would be held back and arrive with the next one).

Both engines take the same prompts (:data:`PROMPTS`, prompt ``(round + i) % 16`` for chat i).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Concurrent chats per level.
LEVELS = (1, 4, 8, 16)
NEW_TOKENS = 64
#: Sixteen distinct requests that each ask for more than 64 tokens (a short reply would end early).
PROMPTS = [
    "Explain in detail how an LRU cache works.",
    "Write a Python function that merges two sorted lists, and explain it.",
    "Describe the water cycle step by step.",
    "What are the main differences between TCP and UDP? Explain each.",
    "Write a short story about a robot learning to paint.",
    "Explain how a hash map handles collisions.",
    "Give five tips for writing maintainable code, with a sentence on each.",
    "Describe how HTTPS keeps a connection private.",
    "Explain what a database index is and when to use one.",
    "Write a Python class for a bank account with deposit and withdraw methods.",
    "Explain the difference between a process and a thread in detail.",
    "Describe how photosynthesis works.",
    "Explain how garbage collection works in Python.",
    "Write a haiku about autumn, then explain its imagery.",
    "Explain recursion to a beginner with an example.",
    "Describe the causes of the French Revolution.",
]


@dataclass
class Reply:
    """One streamed reply: completion tokens, and when each non-empty piece arrived (``time.perf_counter``)."""

    tokens: int
    times: list[float] = field(default_factory=list)


#: Sends one greedy streamed chat of ``prompt`` with at most ``max_new_tokens``.
Chat = Callable[[str, int], Awaitable[Reply]]


def steady_decode(replies: Sequence[Reply]) -> tuple[float, int, float]:
    """(pieces/s, pieces, seconds) in the window where every reply was streaming; (nan, 0, 0) when there is none."""
    if any(len(r.times) < 2 for r in replies):
        return float("nan"), 0, 0.0
    start = max(r.times[0] for r in replies)
    end = min(r.times[-1] for r in replies)
    if end <= start:
        return float("nan"), 0, 0.0
    # A piece counts when it arrived after the window opened: each one is a step that ran for every stream.
    pieces = sum(1 for r in replies for t in r.times if start < t <= end)
    return pieces / (end - start), pieces, end - start


async def level(chat: Chat, concurrency: int, new_tokens: int = NEW_TOKENS, rounds: int = 3) -> dict[str, Any]:
    """``concurrency`` chats at once, ``rounds`` times: median rates, and what they are made of."""
    rates, steady, walls, tokens = [], [], [], []
    for r in range(rounds):
        prompts = [PROMPTS[(r + i) % len(PROMPTS)] for i in range(concurrency)]
        start = time.perf_counter()
        replies = await asyncio.gather(*(chat(p, new_tokens) for p in prompts))
        wall = time.perf_counter() - start
        total = sum(reply.tokens for reply in replies)
        rates.append(total / wall)
        steady.append(steady_decode(replies)[0])
        walls.append(wall)
        tokens.append(total)
    return {
        "tok_s": statistics.median(rates),
        "tok_s_rounds": rates,
        "decode_tok_s": statistics.median(steady),
        "decode_tok_s_rounds": steady,
        "wall_s": statistics.median(walls),
        "completion_tokens": tokens,
    }


async def measure(chat: Chat, levels: Sequence[int] = LEVELS, new_tokens: int = NEW_TOKENS, rounds: int = 3) -> dict[str, Any]:
    """Every level through ``chat`` (after one warm-up chat); each rate is also given over one chat's."""
    await chat(PROMPTS[0], 8)
    out = {str(n): await level(chat, n, new_tokens, rounds) for n in levels}
    one = out[str(levels[0])]
    return {
        "levels": out,
        "speedup": {k: v["tok_s"] / one["tok_s"] for k, v in out.items()},
        "decode_speedup": {k: v["decode_tok_s"] / one["decode_tok_s"] for k, v in out.items()},
    }
