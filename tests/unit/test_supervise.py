"""The supervisor of `make up` on fake processes: restart with backoff, print each event (issue 24, item 7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from devtools.supervise import Backoff, Supervisor


@dataclass
class Fake:
    name: str
    up: bool = True
    ready: bool = True
    code: int | None = None
    launches: int = 0
    fail_launch: bool = False
    pid: int = 100

    def alive(self) -> bool:
        return self.up

    def exit_code(self) -> int | None:
        return self.code

    def launch(self) -> None:
        if self.fail_launch:
            raise OSError("port in use")
        self.launches += 1
        self.pid += 1
        self.up, self.code = True, None

    def serving(self) -> bool:
        return self.ready


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    clock: Clock = field(default_factory=Clock)
    said: list[str] = field(default_factory=list)

    def supervisor(self, *procs: Fake) -> Supervisor:
        return Supervisor(procs, Backoff(first_s=1, max_s=8, stable_s=60), clock=self.clock, say=self.said.append)


def _die(p: Fake, code: int) -> None:
    p.up, p.code = False, code


def test_a_dead_process_is_restarted_after_a_delay_and_the_others_are_left_alone() -> None:
    w = World()
    cache, gateway = Fake("cache"), Fake("gateway")
    sup = w.supervisor(cache, gateway)
    _die(cache, -9)
    sup.poll()
    assert w.said == ["[supervisor] cache was killed by signal 9; restarting in 1s, the others keep serving"]
    assert cache.launches == 0
    w.clock.now = 1.0
    cache.ready = False
    sup.poll()
    assert cache.launches == 1 and w.said[-1] == "[supervisor] cache: restarted (restart 1, pid 101)"
    sup.poll()  # not serving yet: nothing said
    assert len(w.said) == 2
    cache.ready = True
    w.clock.now = 3.5
    sup.poll()
    assert w.said[-1] == "[supervisor] cache: serving again, 2.5s after the restart"
    assert gateway.launches == 0


def test_quick_failures_double_the_delay_up_to_the_cap_and_a_stable_run_resets_it() -> None:
    w = World()
    inference = Fake("inference")
    sup = w.supervisor(inference)
    delays = []
    for _ in range(6):
        _die(inference, 1)
        sup.poll()
        delays.append(sup.units[0].delay_s)
        w.clock.now = sup.units[0].due  # type: ignore[assignment]
        sup.poll()
    assert delays == [1, 2, 4, 8, 8, 8]
    assert "inference exited with code 1; restarting in 8s" in w.said[-2]
    w.clock.now += 61  # up for a minute: the next failure is not part of a crash loop
    _die(inference, 0)
    sup.poll()
    assert sup.units[0].delay_s == 1 and "exited with code 0" in w.said[-1]


def test_a_failed_launch_is_said_and_tried_again() -> None:
    w = World()
    redis = Fake("redis", fail_launch=True)
    sup = w.supervisor(redis)
    _die(redis, -9)
    sup.poll()
    w.clock.now = 1
    sup.poll()
    assert w.said[-2] == "[supervisor] redis: restart 1 failed: port in use"
    assert "restarting in 2s" in w.said[-1]
    redis.fail_launch = False
    w.clock.now = 3
    sup.poll()
    assert redis.up and redis.launches == 1
