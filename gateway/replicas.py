"""Inference replicas as the gateway routes to them: one channel each, a ring over them (:mod:`.core.ring`).

Why a picker of our own rather than gRPC's ``ring_hash`` policy keyed by a request
header (gRFC A76): with the pinned grpcio 1.85.1 that policy routes by header only
behind the environment variable ``GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY``
(without it no call went through), it has no bounded load (a busy conversation's
replica takes every call of it however loaded), and it cannot say where a call
went, so none of it is testable here beyond "same header, same server". The picker
sees the calls in flight per replica (the bound), the channel states (a replica
that is down is passed over; its conversations return when it does) and reports
each pick, and it costs a dict lookup and a bisect per call.

Membership: the inference target resolved in DNS every ``resolve_s`` (with the
headless Service ``dns:///reprise-inference-headless:50051`` that is every ready
pod), or a fixed comma-separated list (``127.0.0.1:50061,127.0.0.1:50062``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc

from gateway.clients import GrpcInference
from gateway.core.ring import Pick, Ring, Route, conversation_key
from gateway.core.types import InferenceChunk, ModelIdentity, Prompt
from reprise.domain import SentimentResult, Usage
from reprise.errors import Unavailable
from reprise.rpc.tls import ClientTLS

log = logging.getLogger(__name__)

ChannelFactory = Callable[[str, ClientTLS | None], grpc.aio.Channel]


@dataclass(frozen=True)
class RoutingConfig:
    #: A replica is passed over while it carries more than this times its share of the calls in flight.
    load_factor: float = 1.25
    #: Seconds between DNS resolutions of the target (0: resolve once).
    resolve_s: float = 10.0
    #: After an UNAVAILABLE, the replica is passed over this long (its channel reconnects meanwhile).
    down_s: float = 2.0
    #: How long a call waits for a reconnecting replica before trying the next one.
    connect_grace_s: float = 0.5


def parse_target(target: str) -> tuple[list[str], str | None]:
    """Fixed members, or ``([], "host:port")`` to resolve: ``dns:///h:p``, ``dns:h:p``, ``h:p``, ``a:p,b:p``."""
    if "," in target:
        return [t.strip().removeprefix("ipv4:") for t in target.split(",") if t.strip()], None
    for prefix in ("dns:///", "dns:"):
        if target.startswith(prefix):
            return [], target[len(prefix) :]
    return [], target


async def resolve(hostport: str) -> list[str]:
    """Every IPv4 address of the host (IPv6 if it has none), as ``ip:port``; a literal address as itself."""
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    loop = asyncio.get_running_loop()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            infos = await loop.getaddrinfo(host, int(port), family=family, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        addresses = sorted({info[4][0] for info in infos})
        if addresses:
            return [f"[{a}]:{port}" if family == socket.AF_INET6 else f"{a}:{port}" for a in addresses]
    return []


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Replica:
    def __init__(self, address: str, channel: grpc.aio.Channel, connect_grace_s: float) -> None:
        self.address = address
        self.channel = channel
        self.client = GrpcInference(channel, connect_grace_s)
        self.in_flight = 0
        self.down_until = 0.0

    def usable(self, now: float) -> bool:
        if now < self.down_until:
            return False
        return self.channel.get_state() not in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


class RoutedInference:
    """The inference port over every replica: chats by conversation, classify spread, failover on UNAVAILABLE."""

    def __init__(
        self,
        target: str,
        tls: ClientTLS | None,
        make_channel: ChannelFactory,
        config: RoutingConfig = RoutingConfig(),
        on_pick: Callable[[str], None] | None = None,
    ) -> None:
        self._on_pick = on_pick
        self._fixed, self._resolve = parse_target(target)
        host = self._resolve.rpartition(":")[0].strip("[]") if self._resolve else ""
        # Channels dial the addresses the name resolved to; the certificate names the service, not the pod IP.
        named = tls is not None and not tls.server_name and host and not _is_ip(host)
        self._tls = dataclasses.replace(tls, server_name=host) if named else tls  # type: ignore[arg-type]
        self._make_channel = make_channel
        self._config = config
        self._ring = Ring(load_factor=config.load_factor)
        self._replicas: dict[str, _Replica] = {}
        self._refresh: asyncio.Task[None] | None = None
        #: Calls per (replica, route) since start: what the tests and the bench read.
        self.picks: Counter[tuple[str, Route]] = Counter()

    @property
    def members(self) -> tuple[str, ...]:
        return self._ring.members

    async def start(self) -> None:
        await self._update()
        if self._resolve and self._config.resolve_s > 0:
            self._refresh = asyncio.create_task(self._keep_resolving(), name="inference-resolve")

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        for replica in self._replicas.values():
            await replica.channel.close()
        self._replicas.clear()

    async def _keep_resolving(self) -> None:
        while True:
            await asyncio.sleep(self._config.resolve_s)
            try:
                await self._update()
            except Exception:  # keep the members we have; DNS may be back next time
                log.exception("resolving the inference target failed")

    async def _update(self) -> None:
        members = self._fixed or await resolve(self._resolve)  # type: ignore[arg-type]
        if not members:
            if self._replicas:
                log.warning("inference target %s resolved to nothing; keeping %d replicas", self._resolve, len(self._replicas))
                return
            members = [self._resolve]  # type: ignore[list-item]  # let the channel resolve it (and fail) itself
        changed = tuple(sorted(set(members))) != self._ring.members
        gone = set(self._replicas) - set(members)
        for address in members:
            if address not in self._replicas:
                grace = self._config.connect_grace_s if len(members) > 1 else 3.0
                self._replicas[address] = _Replica(address, self._make_channel(address, self._tls), grace)
        self._ring.set_members(members)
        for address in gone:
            for route in Route:
                self.picks.pop((address, route), None)
            replica = self._replicas.pop(address)
            # Calls still running on it finish; the channel closes after them (grace of a long reply).
            asyncio.get_running_loop().call_later(300, lambda c=replica.channel: asyncio.ensure_future(c.close()))
        if changed:
            log.info("inference replicas: %s", ", ".join(sorted(members)))

    def _pick(self, key: bytes | None, exclude: set[str]) -> _Replica:
        now = time.monotonic()
        load = {a: r.in_flight for a, r in self._replicas.items()}
        pick: Pick | None = self._ring.pick(
            key, load, lambda a: a not in exclude and a in self._replicas and self._replicas[a].usable(now)
        )
        if pick is None:
            # Nothing looks usable: try the best candidate anyway (a channel may be just reconnecting).
            candidates = [a for a in self._ring.members if a not in exclude and a in self._replicas]
            if not candidates:
                raise Unavailable("inference: no replica is reachable")
            pick = self._ring.pick(key, load, lambda a: a in candidates)
            assert pick is not None
        self.picks[(pick.member, pick.route)] += 1
        if self._on_pick is not None:
            self._on_pick(pick.route.value)
        return self._replicas[pick.member]

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        """What is left of the caller's deadline for the next attempt."""
        return None if deadline is None else max(0.001, deadline - time.monotonic())

    def _down(self, replica: _Replica, exc: Unavailable) -> None:
        replica.down_until = time.monotonic() + self._config.down_s
        log.warning("inference replica %s unavailable (%s); trying another", replica.address, exc.message)

    async def classify(self, text: str, timeout_s: float | None) -> tuple[SentimentResult, Usage]:
        tried: set[str] = set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            replica = self._pick(None, tried)
            tried.add(replica.address)
            with replica.busy():
                try:
                    return await replica.client.classify(text, self._left(deadline))
                except Unavailable as exc:
                    if len(tried) >= len(self._replicas):
                        raise
                    self._down(replica, exc)

    async def chat_stream(self, prompt: Prompt, timeout_s: float | None) -> AsyncIterator[InferenceChunk]:
        key = conversation_key(prompt)
        tried: set[str] = set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            replica = self._pick(key, tried)
            tried.add(replica.address)
            started = False
            with replica.busy():
                try:
                    async with contextlib.aclosing(
                        replica.client.chat_stream(prompt, self._left(deadline))
                    ) as chunks:
                        async for chunk in chunks:
                            started = True
                            yield chunk
                    return
                except Unavailable as exc:
                    # Once a piece reached the caller the reply cannot restart elsewhere.
                    if started or len(tried) >= len(self._replicas):
                        raise
                    self._down(replica, exc)

    async def model_identity(self) -> ModelIdentity:
        # Any replica will do; asked in a fixed order (usable ones first) so these calls, made
        # every --model-refresh seconds, do not shift the turn-taking of classify calls.
        now = time.monotonic()
        replicas = sorted(self._replicas.values(), key=lambda r: (not r.usable(now), r.address))
        if not replicas:
            raise Unavailable("inference: no replica is reachable")
        for i, replica in enumerate(replicas):
            try:
                return await replica.client.model_identity()
            except Unavailable:
                if i == len(replicas) - 1:
                    raise
        raise AssertionError("unreachable")
