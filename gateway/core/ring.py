"""Which inference replica serves a call: consistent hashing with bounded load.

A conversation's turns should reach the replica that already holds its prefix in
its KV cache: there turn 5 costs a prefill of the new turn only, elsewhere the
whole history again. The conversation's key (:func:`conversation_key`) is a hash
of what every turn of it starts with: the system prompt and the first user turn.

Each replica owns ``vnodes`` points on a 64-bit ring; a key's home is the first
point clockwise from its hash, so adding or removing one replica moves only the
conversations on its arcs (the rest keep their warm replica). Bounded load
(Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads",
2018; the balance factor of HAProxy and Envoy's ring hash): a replica already
carrying ``load_factor`` times its share of the calls in flight is passed over for
the next one on the ring, so one busy conversation cannot pile onto one replica.
A replica that is down is passed over the same way. Calls without a key
(classify) go to the least loaded replica, ties broken in turn.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.core.types import Prompt
from reprise.domain import Role


class Route(str, enum.Enum):
    HOME = "home"  # the key's own replica
    SPILL = "spill"  # its replica was over its bound: the next on the ring
    FAILOVER = "failover"  # its replica was down: the next on the ring
    SPREAD = "spread"  # no key: the least loaded replica


@dataclass(frozen=True, slots=True)
class Pick:
    member: str
    route: Route


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def conversation_key(prompt: Prompt) -> bytes:
    """The same for every turn of one conversation: its system prompt and first user turn."""
    first = next((t.content for t in prompt.history if t.role is Role.USER), prompt.text)
    return hashlib.blake2b(f"{prompt.system_key}\x00{first}".encode(), digest_size=16).digest()


class Ring:
    def __init__(self, vnodes: int = 100, load_factor: float = 1.25) -> None:
        if load_factor < 1.0:
            raise ValueError("load_factor must be at least 1")
        self._vnodes = vnodes
        self.load_factor = load_factor
        self._points: list[int] = []
        self._owners: list[str] = []
        self._members: tuple[str, ...] = ()
        self._turn = 0

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def set_members(self, members: Iterable[str]) -> None:
        self._members = tuple(sorted(set(members)))
        ring = sorted((_point(f"{m}#{i}".encode()), m) for m in self._members for i in range(self._vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [m for _, m in ring]

    def pick(self, key: bytes | None, load: Mapping[str, int], usable: Callable[[str], bool]) -> Pick | None:
        """The replica for ``key`` given the calls in flight per replica; None when none is usable."""
        live = [m for m in self._members if usable(m)]
        if not live:
            return None
        if key is None:
            self._turn += 1
            # Least loaded; among equals, the next in turn, so idle replicas share the calls evenly.
            start = self._turn % len(live)
            order = live[start:] + live[:start]
            return Pick(min(order, key=lambda m: load.get(m, 0)), Route.SPREAD)
        total = sum(load.get(m, 0) for m in live) + 1  # this call included
        bound = math.ceil(self.load_factor * total / len(live))
        route = Route.HOME
        for member in self._walk(_point(key)):
            if not usable(member):
                route = Route.FAILOVER if route is Route.HOME else route
                continue
            if load.get(member, 0) + 1 <= bound:
                return Pick(member, route)
            route = Route.SPILL if route is Route.HOME else route
        return Pick(min(live, key=lambda m: load.get(m, 0)), Route.SPILL)  # unreachable: some replica is under the bound

    def _walk(self, point: int) -> Iterable[str]:
        """Distinct members clockwise from ``point``."""
        seen: set[str] = set()
        n = len(self._points)
        start = bisect.bisect_left(self._points, point)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._members):
                    return
