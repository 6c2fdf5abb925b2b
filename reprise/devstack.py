"""Run the whole stack locally: a private redis-server and the three services as processes.

Used by ``make demo`` (a scripted tour), ``make up`` (stay in the foreground
until Ctrl-C), the benchmarks and the fault drills. Everything it starts it
also stops, whatever happens.

Pinning: given CPU lists, every process is started through ``deploy/pin.sh``,
the same script the Kubernetes entrypoint runs, so the inference service gets
cores of its own here exactly as it does under the kubelet's static CPU
manager. :func:`plan_cpus` splits the CPUs this process may use the way
``make up`` and ``make bench`` do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PIN = ROOT / "deploy" / "pin.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``address`` answers grpc.health.v1 with SERVING."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for {address} exited with code {proc.returncode}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout_s:.0f}s")


def compress_cpus(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the kernel's CPU-list format that pin.sh takes)."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def plan_cpus(allowed: Sequence[int] | None = None) -> tuple[str, str]:
    """Split CPUs into (frontend, inference) lists, as a node would be split between pods.

    The inference service gets cores of its own (the last ones); gateway, cache
    and Redis share the first quarter (at least one). With a single CPU there is
    nothing to split and both lists are empty (no pinning).
    """
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    if len(cpus) < 2:
        return "", ""
    n_front = max(1, len(cpus) // 4)
    return compress_cpus(cpus[:n_front]), compress_cpus(cpus[n_front:])


def pinned(cpus: str, argv: list[str]) -> list[str]:
    """``argv`` run through ``deploy/pin.sh`` on ``cpus``; unchanged when ``cpus`` is empty."""
    return [str(PIN), cpus, "--", *argv] if cpus else argv


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class RedisTLS:
    """PEM files for a TLS-only redis-server (Debian's is built with TLS)."""

    cert: str
    key: str
    #: The CA that client certificates must chain to.
    ca: str
    #: Refuse clients without a certificate from ``ca`` (mutual TLS), as a managed Redis with mTLS does.
    client_certs: bool = True


class RedisServer:
    """A private redis-server on a free port in a temp dir.

    No persistence by default. With ``persist=True`` every write goes to an
    append-only file (fsync always), so :meth:`restart` brings the same
    entries back, as a StatefulSet's Redis on its volume does. With ``tls``
    the port speaks TLS only (the plain port is off) and :attr:`url` is
    ``rediss://localhost:<port>/0``.
    """

    def __init__(
        self, port: int | None = None, password: str | None = None, *, persist: bool = False, cpus: str = "",
        tls: RedisTLS | None = None,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.persist = persist
        self.cpus = cpus
        self.tls = tls
        self._dir = tempfile.mkdtemp(prefix="reprise-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}localhost:{self.port}/0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _port_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        t = self.tls
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", t.cert, "--tls-key-file", t.key,
                "--tls-ca-cert-file", t.ca, "--tls-auth-clients", "yes" if t.client_certs else "no"]

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [exe, *self._port_args(), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--dir", self._dir, "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(pinned(self.cpus, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._answers():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def _answers(self) -> bool:
        """Without TLS, a PING is answered: a server still loading its append-only file accepts connections
        but refuses commands (LOADING). With TLS, the port accepts (the handshake needs a client certificate
        this process may not hold)."""
        if self.tls is not None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
            return False
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1.0) as client:
                return bool(client.ping())
        except redis.ConnectionError:  # BusyLoadingError (LOADING) included
            return False

    def _terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> RedisServer:
        """Stop (SIGTERM: an AOF server flushes) and start again on the same port and directory."""
        self._terminate()
        return self.start()

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class ServiceProcess:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int | None:
        """SIGKILL: a crash, as far as everyone else can tell."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait()

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class StackConfig:
    model: str = "default"
    model_cache: Path = ROOT / ".models"
    run_dir: Path = ROOT / ".run"
    #: CPUs for the inference service (e.g. "1"); empty: no pinning.
    inference_cpus: str = ""
    #: CPUs for gateway, cache and redis; empty: no pinning.
    frontend_cpus: str = ""
    gateway_port: int = 0
    cache_port: int = 0
    inference_port: int = 0
    extra_gateway_args: Sequence[str] = ()
    extra_cache_args: Sequence[str] = ()
    extra_inference_args: Sequence[str] = ()
    ready_timeout_s: float = 900.0
    #: Redis keeps an append-only file, so a Redis restart keeps the entries.
    redis_persist: bool = False
    redis_password: str | None = None


class Stack:
    """Redis + inference + cache + gateway as local processes."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        c = config
        self.redis = RedisServer(password=c.redis_password, persist=c.redis_persist, cpus=c.frontend_cpus)
        py = sys.executable

        self.inference = ServiceProcess(
            "inference",
            pinned(c.inference_cpus, [py, "-m", "inference_svc", "--host", "127.0.0.1",
                   "--port", str(c.inference_port or free_port()), "--model", c.model,
                   "--model-cache", str(c.model_cache), "--metrics-port", "0", "--log-format", "text",
                   *c.extra_inference_args]),
            0, c.run_dir / "inference.log",
        )
        self.cache = ServiceProcess(
            "cache",
            pinned(c.frontend_cpus, [py, "-m", "cache_svc", "--host", "127.0.0.1",
                   "--port", str(c.cache_port or free_port()), "--redis-url", self.redis.url,
                   "--metrics-port", "0", "--log-format", "text", *c.extra_cache_args]),
            0, c.run_dir / "cache.log",
        )
        for svc in (self.inference, self.cache):
            svc.port = int(svc.argv[svc.argv.index("--port") + 1])
        self.gateway = ServiceProcess(
            "gateway",
            pinned(c.frontend_cpus, [py, "-m", "gateway", "--host", "127.0.0.1",
                   "--port", str(c.gateway_port or free_port()), "--cache-target", self.cache.address,
                   "--inference-target", self.inference.address, "--metrics-port", "0",
                   "--log-format", "text", *c.extra_gateway_args]),
            0, c.run_dir / "gateway.log",
        )
        self.gateway.port = int(self.gateway.argv[self.gateway.argv.index("--port") + 1])

    @property
    def services(self) -> tuple[ServiceProcess, ...]:
        return (self.inference, self.cache, self.gateway)

    def start(self) -> Stack:
        for svc in self.services:
            svc.log_path.write_bytes(b"")
        self.redis.start()
        for svc in self.services:
            svc.start()
        for svc in self.services:
            try:
                wait_serving(svc.address, self.config.ready_timeout_s, svc.proc)
            except Exception as exc:
                tail = svc.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{svc.name} did not become ready: {exc}\n--- {svc.log_path} ---\n{tail}") from exc
        return self

    def restart(self, svc: ServiceProcess, timeout_s: float | None = None) -> None:
        """Start ``svc`` again (after a kill or stop) on its port and wait until it is SERVING."""
        if svc.alive():
            svc.stop()
        svc.start()
        wait_serving(svc.address, self.config.ready_timeout_s if timeout_s is None else timeout_s, svc.proc)

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.redis.stop()


@contextlib.contextmanager
def running_stack(config: StackConfig) -> Iterator[Stack]:
    stack = Stack(config)
    try:
        yield stack.start()
    finally:
        stack.stop()


def _print_up(stack: Stack) -> None:
    gw = stack.gateway.address
    print(
        f"""
Reprise is up (Ctrl-C stops everything):
  gateway    {gw}   (public API: reprise.gateway.v1.Gateway)
  cache      {stack.cache.address}   (reprise.cache.v1.Cache)
  inference  {stack.inference.address}   (reprise.inference.v1.Inference)
  redis      {stack.redis.url}
  logs       {stack.config.run_dir}/*.log
  cpus       inference {stack.config.inference_cpus or "unpinned"}, gateway/cache/redis {stack.config.frontend_cpus or "unpinned"}
             (deploy/pin.sh, as in the Kubernetes entrypoint; --no-pin to turn off)

Try:
  grpcurl -plaintext {gw} list
  grpcurl -plaintext -d '{{"text": "I love this phone"}}' {gw} reprise.gateway.v1.Gateway/Classify
  grpcurl -plaintext -d '{{"text": "这家餐厅的菜太难吃了"}}' {gw} reprise.gateway.v1.Gateway/Analyze
  grpcurl -plaintext -d '{{"text": "What is a cache?"}}' {gw} reprise.gateway.v1.Gateway/ChatStream
  grpcurl -plaintext -d '{{}}' {stack.inference.address} reprise.inference.v1.Inference/ModelInfo
  grpcurl -plaintext -d '{{}}' {stack.cache.address} reprise.cache.v1.Cache/Stats
""",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reprise.devstack", description="Run the local stack.")
    parser.add_argument("command", choices=["up"], help="up: start everything and stay in the foreground")
    parser.add_argument("--model", default=os.environ.get("REPRISE_MODEL", "default"))
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("REPRISE_GATEWAY_PORT", "50050")))
    parser.add_argument("--inference-cpus", default=os.environ.get("REPRISE_UP_INFERENCE_CPUS", "auto"),
                        help="CPU list for the inference service; 'auto': all but the first quarter of the CPUs")
    parser.add_argument("--frontend-cpus", default=os.environ.get("REPRISE_UP_FRONTEND_CPUS", "auto"),
                        help="CPU list for gateway, cache and Redis; 'auto': the first quarter (at least one)")
    parser.add_argument("--no-pin", action="store_true", help="run every process unpinned")
    args = parser.parse_args(argv)
    front, infer = ("", "") if args.no_pin else plan_cpus()
    config = StackConfig(
        model=args.model,
        gateway_port=args.gateway_port,
        inference_cpus="" if args.no_pin else (infer if args.inference_cpus == "auto" else args.inference_cpus),
        frontend_cpus="" if args.no_pin else (front if args.frontend_cpus == "auto" else args.frontend_cpus),
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    print("starting redis, inference (first start converts the model: ~1 min), cache, gateway ...", flush=True)
    try:
        with running_stack(config) as stack:
            _print_up(stack)
            while not stop:
                for svc in stack.services:
                    if svc.proc is not None and svc.proc.poll() is not None:
                        raise SystemExit(f"{svc.name} exited with code {svc.proc.returncode}; see {svc.log_path}")
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("stopped.", flush=True)


if __name__ == "__main__":
    main()
