"""Token choice and text streaming: sampling, stop strings, incremental detokenization.

Token choice is a chain of pure functions of one row of logits, in the order
Hugging Face's ``generate`` applies them: repetition penalty, then (sampling
only) temperature, top-k, top-p, min-p. :func:`pick_token` runs the chain for
one sequence; a batched decoder calls it once per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import torch

from reprise.domain import Decoding

#: Where a filtered-out token's logit goes (``-inf`` keeps softmax exact and multinomial away from it).
_OUT = float("-inf")


#: The fields a model's generation config supplies when a request leaves them unset.
DEFAULTED = ("top_p", "top_k", "min_p", "repetition_penalty")


def with_defaults(decoding: Decoding, defaults: Decoding) -> Decoding:
    """``decoding`` with every unset (``None``) field taken from ``defaults`` (the model's generation config).

    ``temperature`` is not defaulted: a reply samples only when its request asks to (a model's
    ``do_sample`` would make default replies differ between replicas and restarts, and the cache
    would freeze whichever sample came first). Length, stop strings and seed are the request's and
    the server's: admission prices a reply by the server's ``max_new_tokens``.
    """
    fill = {
        name: getattr(defaults, name)
        for name in DEFAULTED
        if getattr(decoding, name) is None and getattr(defaults, name) is not None
    }
    return replace(decoding, **fill) if fill else decoding


def penalize_repetition(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """``logits`` ``[vocab]`` with the tokens in ``previous`` made less likely (``penalty`` > 1), as in CTRL.

    A positive logit is divided by ``penalty``, a negative one multiplied, so the token
    always moves the same way. Each id counts once however often it occurred. Returns a new tensor.
    """
    out = logits.float().clone()
    if penalty == 1.0 or previous.numel() == 0:
        return out
    ids = previous[(previous >= 0) & (previous < out.numel())]
    score = out[ids]
    out[ids] = torch.where(score > 0, score / penalty, score * penalty)
    return out


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits (ties with the k-th kept too); 0 or ``k`` >= vocab keeps all."""
    if k <= 0 or k >= logits.numel():
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, _OUT)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of likeliest tokens whose probability reaches ``p`` (at least one token)."""
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_p, order = torch.sort(probs, descending=True)
    drop_sorted = torch.cumsum(sorted_p, 0) - sorted_p >= p  # the mass before a token already reaches p
    drop_sorted[0] = False
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, _OUT)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the likeliest token's (the best always stays)."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(), _OUT)


def previous_ids(tokens: Iterable[int], exempt: Iterable[int] = ()) -> torch.Tensor:
    """The distinct ids of ``tokens`` a repetition penalty applies to, without ``exempt`` (end-of-turn ids:
    they close every earlier turn of the prompt, and penalizing them makes replies run on)."""
    return torch.tensor(sorted(set(tokens) - set(exempt)), dtype=torch.long)


def pick_token(
    logits: torch.Tensor,
    decoding: Decoding,
    generator: torch.Generator | None,
    previous: torch.Tensor | Sequence[int] | None = None,
) -> int:
    """The next token for one row of logits ``[vocab]``.

    Greedy (``decoding.greedy``): the argmax. Sampling: temperature, then top-k, top-p and min-p
    filters (each only when set), then a draw with ``generator``. ``previous``: the token ids
    ``decoding.repetition_penalty`` applies to (see :func:`previous_ids`); ignored without a penalty.
    """
    penalty = decoding.repetition_penalty
    if penalty is not None and penalty != 1.0 and previous is not None and len(previous):
        ids = previous if isinstance(previous, torch.Tensor) else torch.tensor(list(previous), dtype=torch.long)
        if decoding.greedy and penalty > 1.0:
            # A penalty above 1 only lowers the logits it touches: when the first maximum is not one of them, it
            # is still the first maximum afterwards. That saves copying the vocabulary's logits for most tokens
            # (0.3 ms of each stream's 64 per pass of eight).
            best = int(torch.max(logits, dim=-1).indices)
            if not bool((ids == best).any()):
                return best
        logits = penalize_repetition(logits, ids, penalty)
    if decoding.greedy:
        return int(torch.max(logits, dim=-1).indices)  # the first maximum, like argmax, at ~1/3 of its time on CPU
    scores = logits.float() / decoding.temperature
    if decoding.top_k:
        scores = top_k_filter(scores, decoding.top_k)
    if decoding.top_p is not None:
        scores = top_p_filter(scores, decoding.top_p)
    if decoding.min_p:
        scores = min_p_filter(scores, decoding.min_p)
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest stop string in ``text`` at or after ``start``."""
    hits = [i for s in stops if s and (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters may not be sent yet: a stop-string prefix or a partial UTF-8 character."""
    end = len(text.rstrip("\ufffd"))
    hold = len(text) - end
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), longest, -1):
            if text[:end].endswith(s[:k]):
                longest = k
                break
    return hold + longest


class TextStream:
    """Turns generated token ids into text deltas, cutting at stop strings.

    Decoding the whole reply every token costs O(n^2); this re-decodes only a
    short window (from a few tokens back, so multi-token characters and
    byte-level merges come out right), the technique TGI and vLLM use.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self._decode = decode
        self._stops = tuple(s for s in stops if s)
        self._tokens: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # decoded so far (complete characters only)
        self._sent = 0
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that can be sent now (maybe empty)."""
        self._tokens.append(token)
        prefix = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full = self._decode(self._tokens[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
        if self._stops:
            # A stop string can only start in the part not yet sent (earlier text was checked).
            at = find_stop(self.text, self._stops, max(0, self._sent - max(map(len, self._stops))))
            if at is not None:
                self.text = self.text[:at]
                self.stopped = True
                return self._flush(len(self.text))
        return self._flush(len(self.text) - held_back(self.text, self._stops))

    def finish(self) -> str:
        """Everything not sent yet (called once at the end)."""
        if not self.stopped:
            full = self._decode(self._tokens[self._prefix_offset :])
            prefix = self._decode(self._tokens[self._prefix_offset : self._read_offset])
            self.text += full[len(prefix) :]
            at = find_stop(self.text, self._stops)
            if at is not None:
                self.text = self.text[:at]
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        delta = self.text[self._sent : upto]
        self._sent = upto
        return delta
