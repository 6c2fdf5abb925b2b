"""Token choice and text streaming: sampling, stop strings, incremental detokenization."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from reprise.domain import Decoding


def pick_token(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator | None) -> int:
    """Greedy argmax, or temperature + nucleus (top_p) sampling from fp32 ``logits`` ``[vocab]``."""
    if decoding.greedy:
        return int(torch.max(logits, dim=-1).indices)  # the first maximum, like argmax, at ~1/3 of its time on CPU
    probs = torch.softmax(logits.float() / decoding.temperature, dim=-1)
    if decoding.top_p is not None and decoding.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < decoding.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


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
