"""Range checks on decoding parameters, shared by the gateway and the inference service (no grpc, no model).

Both hops (and the cache, on what it keys) check the same ranges with the same messages, so a caller gets the same
INVALID_ARGUMENT whichever service it talks to. Per-deployment limits (``max_new_tokens``,
stop strings) stay with each service's own limits.
"""

from __future__ import annotations

import math

from reprise.domain import Decoding
from reprise.errors import InvalidArgument


def _in(value: float, low: float, high: float, low_open: bool = False) -> bool:
    return math.isfinite(value) and (low < value if low_open else low <= value) and value <= high


def check_sampling(d: Decoding, field: str = "decoding") -> None:
    """INVALID_ARGUMENT naming the first decoding field outside its range (unset fields are fine).

    ``field``: the path of the decoding message in the request (the cache's is ``query.decoding``).
    """
    if d.temperature is not None and not _in(d.temperature, 0.0, 2.0):
        raise InvalidArgument(f"{field}.temperature", "must be in [0, 2]")
    if d.top_p is not None and not _in(d.top_p, 0.0, 1.0, low_open=True):
        raise InvalidArgument(f"{field}.top_p", "must be in (0, 1]")
    if d.top_k is not None and d.top_k < 0:
        raise InvalidArgument(f"{field}.top_k", "must be >= 0 (0 = no limit)")
    if d.min_p is not None and not _in(d.min_p, 0.0, 1.0):
        raise InvalidArgument(f"{field}.min_p", "must be in [0, 1] (0 = off)")
    if d.repetition_penalty is not None and not _in(d.repetition_penalty, 0.0, 2.0, low_open=True):
        raise InvalidArgument(f"{field}.repetition_penalty", "must be in (0, 2] (1 = off)")
