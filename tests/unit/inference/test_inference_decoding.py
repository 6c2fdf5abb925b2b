"""Streaming detokenization, stop strings and token choice."""

from __future__ import annotations

import torch

from inference_svc.core.decoding import TextStream, find_stop, held_back, pick_token
from reprise.domain import Decoding

# A toy byte-level vocabulary: token i decodes to PIECES[i]; multi-byte UTF-8 split across tokens.
_EURO = "€".encode()
PIECES = [b"Hel", b"lo", b" wor", b"ld", b"!", _EURO[:1], _EURO[1:], b"STOP", b"ST", b"OP", b" end"]


def _decode(tokens: list[int]) -> str:
    return b"".join(PIECES[t] for t in tokens).decode("utf-8", errors="replace")


def _run(tokens: list[int], stops: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(_decode, stops)
    deltas = []
    for t in tokens:
        deltas.append(stream.push(t))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    return deltas, stream


def test_deltas_concatenate_to_the_text_and_hold_partial_characters() -> None:
    deltas, _ = _run([0, 1, 5, 6, 2, 3])
    assert "".join(deltas) == "Hello€ world"
    assert deltas[2] == ""  # half of the euro sign is never sent
    assert "\ufffd" not in "".join(deltas)


def test_stop_string_cuts_the_reply_even_across_tokens() -> None:
    deltas, stream = _run([0, 1, 8, 9, 10], stops=("STOP",))
    assert stream.stopped and "".join(deltas) == "Hello"
    deltas, stream = _run([0, 1, 7, 10], stops=("STOP",))
    assert "".join(deltas) == "Hello"


def test_stop_prefix_is_held_back_until_it_cannot_be_a_stop() -> None:
    stream = TextStream(_decode, ("STOP",))
    assert stream.push(0) == "Hel"
    assert stream.push(8) == ""  # "ST" may become "STOP"
    assert stream.push(4) == "ST!"


def test_find_stop_and_held_back_helpers() -> None:
    assert find_stop("abc STOP x END", ("END", "STOP")) == 4
    assert find_stop("abc", ("x",)) is None
    assert held_back("hello ST", ("STOP",)) == 2
    assert held_back("hello \ufffd", ()) == 1


def test_pick_token_greedy_and_seeded_sampling() -> None:
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    assert pick_token(logits, Decoding(), None) == 1
    sampled = [pick_token(logits, Decoding(temperature=1.0), torch.Generator().manual_seed(7)) for _ in range(3)]
    again = [pick_token(logits, Decoding(temperature=1.0), torch.Generator().manual_seed(7)) for _ in range(3)]
    assert sampled == again
    # top_p small enough keeps only the best token.
    assert {pick_token(logits, Decoding(temperature=1.0, top_p=0.3), None) for _ in range(20)} == {1}
