"""The prompts that turn one chat model into several tasks.

The system prompts are static, so their KV is computed once and reused by
every request of the task (see the engine).
"""

from __future__ import annotations

SENTIMENT_SYSTEM_PROMPT = (
    "You are a sentiment classifier. Read the user's text (English or Chinese) and answer with "
    "exactly one word: Positive or Negative."
)
#: The label words; the engine scores the first token of each at the answer position.
SENTIMENT_LABELS = ("Positive", "Negative")

CHAT_SYSTEM_PROMPT = "You are Reprise, a concise and helpful assistant. Answer briefly."
