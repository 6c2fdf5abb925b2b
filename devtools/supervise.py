"""Keep the local stack up as Kubernetes would: a process that exits is restarted with backoff.

``make up`` runs Redis and three services as plain processes. Before, one of
them dying (a SIGKILL of the cache, a SIGTERM of inference) stopped the whole
stack, and a dead Redis stayed dead without a word. Here each process is a
:class:`Unit`; :class:`Supervisor` polls them, restarts one that exited after
a delay that doubles per quick failure (1 s, 2 s, 4 s ... 30 s; reset once it
stays up for a minute, like the kubelet's CrashLoopBackOff), and prints every
event. The other processes are untouched, so the gateway keeps answering
(cache misses while the cache is away, cached answers while inference is).

Why not supervisord or honcho: the stack already knows each process's port,
arguments and health check, and the drills in ``tests/faults`` need the same
restarts in-process; a config-file daemon would duplicate all of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Process(Protocol):
    """What the supervisor needs of a process (``ServiceProcess``, or Redis through an adapter)."""

    name: str

    def alive(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def launch(self) -> None:
        """Start again on the same port (returns once the process is spawned)."""

    def serving(self) -> bool:
        """Whether it answers its health check now (a quick, bounded check)."""


@dataclass
class Backoff:
    first_s: float = 1.0
    max_s: float = 30.0
    #: Up this long after a restart: the next failure starts from ``first_s`` again.
    stable_s: float = 60.0


@dataclass
class Unit:
    process: Process
    restarts: int = 0
    delay_s: float = 0.0
    #: When a restart is due (None: not waiting to restart).
    due: float | None = None
    #: When the last restart happened and the unit is not yet serving again (None: serving or never restarted).
    restarted_at: float | None = None
    up_since: float = field(default=0.0)


class Supervisor:
    """Polled by the foreground loop of ``make up``; never blocks for long."""

    def __init__(
        self,
        processes: Sequence[Process],
        backoff: Backoff = Backoff(),
        *,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self._backoff = backoff
        self._clock = clock
        self._say = say
        now = clock()
        self.units = [Unit(p, up_since=now) for p in processes]

    def poll(self) -> None:
        now = self._clock()
        for unit in self.units:
            p = unit.process
            if unit.due is None and not p.alive():
                self._schedule(unit, now)
            elif unit.due is not None and now >= unit.due:
                unit.due = None
                unit.restarts += 1
                try:
                    p.launch()
                except Exception as exc:  # e.g. the port is still held: try again later
                    self._say(f"[supervisor] {p.name}: restart {unit.restarts} failed: {exc}")
                    self._schedule(unit, now)
                    continue
                unit.restarted_at = unit.up_since = now
                pid = getattr(p, "pid", None)
                self._say(f"[supervisor] {p.name}: restarted (restart {unit.restarts}{f', pid {pid}' if pid else ''})")
            elif unit.restarted_at is not None and p.alive() and p.serving():
                self._say(f"[supervisor] {p.name}: serving again, {now - unit.restarted_at:.1f}s after the restart")
                unit.restarted_at = None

    def _schedule(self, unit: Unit, now: float) -> None:
        b = self._backoff
        if now - unit.up_since >= b.stable_s:
            unit.delay_s = 0.0  # it had been fine for a while: this is a new failure, not a crash loop
        unit.delay_s = b.first_s if unit.delay_s == 0.0 else min(b.max_s, unit.delay_s * 2)
        unit.due = now + unit.delay_s
        unit.restarted_at = None
        code = unit.process.exit_code()
        how = f"exited with code {code}" if code is not None and code >= 0 else f"was killed by signal {-code}" if code else "is down"
        self._say(f"[supervisor] {unit.process.name} {how}; restarting in {unit.delay_s:.0f}s, the others keep serving")
