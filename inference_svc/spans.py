"""Where a model call spent its time, as trace spans: queue wait, then prefill and decode.

The worker and engine time each phase (``queue_ms``, ``prefill_ms``,
``decode_ms``) and know nothing of tracing; the servicer calls these helpers
once the answer is complete, with the wall-clock time the call arrived. The
phases follow one another, so the spans are placed end to end from there.
"""

from __future__ import annotations

from inference_svc.core.engine import ChatChunk
from reprise import tracing
from reprise.domain import Usage


def _ns(ms: float) -> int:
    return int(ms * 1e6)


def _tokens(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {
        tracing.PROMPT_TOKENS: usage.prompt_tokens,
        tracing.CACHED_TOKENS: usage.cached_tokens,
        tracing.COMPLETION_TOKENS: usage.completion_tokens,
    }


def chat_spans(start_ns: int, queue_ms: float, last: ChatChunk) -> None:
    """``inference.queue``, ``inference.prefill``, ``inference.decode`` below the current (RPC) span."""
    if not tracing.enabled():
        return
    tokens = _tokens(last.usage)
    tracing.annotate(tokens)
    queued = start_ns + _ns(queue_ms)
    prefilled = queued + _ns(last.prefill_ms)
    tracing.record("inference.queue", start_ns, queued)
    tracing.record(
        "inference.prefill",
        queued,
        prefilled,
        {tracing.PROMPT_TOKENS: tokens.get(tracing.PROMPT_TOKENS, 0), tracing.CACHED_TOKENS: tokens.get(tracing.CACHED_TOKENS, 0)},
    )
    tracing.record(
        "inference.decode", prefilled, prefilled + _ns(last.decode_ms), {tracing.COMPLETION_TOKENS: tokens.get(tracing.COMPLETION_TOKENS, 0)}
    )


def classify_spans(start_ns: int, queue_ms: float, compute_ms: float, batch_size: int, usage: Usage) -> None:
    """``inference.queue`` then ``inference.prefill`` (one forward pass over the batch; no decode)."""
    if not tracing.enabled():
        return
    tracing.annotate({**_tokens(usage), tracing.BATCH_SIZE: batch_size})
    queued = start_ns + _ns(queue_ms)
    tracing.record("inference.queue", start_ns, queued, {tracing.BATCH_SIZE: batch_size})
    tracing.record("inference.prefill", queued, queued + _ns(compute_ms), {tracing.BATCH_SIZE: batch_size, **_tokens(usage)})
