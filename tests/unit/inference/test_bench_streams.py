"""The measurement shared by Reprise and llama-server under concurrency (bench/inference/streams.py)."""

from __future__ import annotations

import asyncio
import math

import pytest

from bench.inference import streams

pytestmark = pytest.mark.unit


def test_steady_decode_counts_only_the_window_where_every_stream_was_decoding() -> None:
    # a: first piece at 1.0, b at 2.0 (its prefill ran after a's): the window opens at 2.0;
    # b ends at 4.0 while a goes on to 6.0: the window closes at 4.0.
    a = streams.Reply(6, [1.0, 1.5, 2.5, 3.0, 3.5, 6.0])
    b = streams.Reply(3, [2.0, 3.0, 4.0])
    rate, pieces, seconds = streams.steady_decode([a, b])
    assert (pieces, seconds) == (5, 2.0)  # a: 2.5, 3.0, 3.5; b: 3.0, 4.0
    assert rate == 2.5


def test_one_stream_is_its_pieces_after_the_first_over_their_span() -> None:
    assert streams.steady_decode([streams.Reply(5, [0.0, 0.1, 0.2, 0.3, 0.4])])[:2] == (pytest.approx(10.0), 4)


@pytest.mark.parametrize("times", [[[1.0], [1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]])
def test_no_window_is_nan_not_an_error(times: list[list[float]]) -> None:
    rate, pieces, _ = streams.steady_decode([streams.Reply(len(t), t) for t in times])
    assert math.isnan(rate) and pieces == 0


async def test_levels_send_n_distinct_chats_at_once_and_report_both_rates() -> None:
    in_flight, peak, seen = 0, 0, []
    loop = asyncio.get_running_loop()

    async def chat(prompt: str, max_new_tokens: int) -> streams.Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.append(prompt)
        reply = streams.Reply(max_new_tokens - 1)
        for _ in range(max_new_tokens - 1):
            await asyncio.sleep(0.002)
            reply.times.append(loop.time())
        in_flight -= 1
        return reply

    out = await streams.measure(chat, levels=(1, 4), new_tokens=10, rounds=2)
    assert peak == 4
    assert out["levels"]["4"]["completion_tokens"] == [36, 36] and out["levels"]["1"]["completion_tokens"] == [9, 9]
    assert out["levels"]["4"]["decode_tok_s"] > 0 and out["decode_speedup"]["1"] == 1.0
    assert seen[-4:] == [streams.PROMPTS[1 + i] for i in range(4)]  # round r, chat i: prompt (r + i) % 16
