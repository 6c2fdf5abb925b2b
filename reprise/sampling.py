"""Range checks on decoding parameters, shared by the gateway and the inference service (no grpc, no model).

Both hops check the same ranges with the same messages, so a caller gets the same
INVALID_ARGUMENT whichever service it talks to. Per-deployment limits (``max_new_tokens``,
stop strings) stay with each service's own limits.
"""

from __future__ import annotations

import math

from reprise.domain import Decoding
from reprise.errors import InvalidArgument


def _in(value: float, low: float, high: float, low_open: bool = False) -> bool:
    return math.isfinite(value) and (low < value if low_open else low <= value) and value <= high


def check_sampling(d: Decoding) -> None:
    """INVALID_ARGUMENT naming the first decoding field outside its range (unset fields are fine)."""
    if d.temperature is not None and not _in(d.temperature, 0.0, 2.0):
        raise InvalidArgument("decoding.temperature", "must be in [0, 2]")
    if d.top_p is not None and not _in(d.top_p, 0.0, 1.0, low_open=True):
        raise InvalidArgument("decoding.top_p", "must be in (0, 1]")
    if d.top_k is not None and d.top_k < 0:
        raise InvalidArgument("decoding.top_k", "must be >= 0 (0 = no limit)")
    if d.min_p is not None and not _in(d.min_p, 0.0, 1.0):
        raise InvalidArgument("decoding.min_p", "must be in [0, 1] (0 = off)")
    if d.repetition_penalty is not None and not _in(d.repetition_penalty, 0.0, 2.0, low_open=True):
        raise InvalidArgument("decoding.repetition_penalty", "must be in (0, 2] (1 = off)")
