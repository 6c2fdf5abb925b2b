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

from devtools.devcerts import ensure_internal_certs
from reprise.rpc.tls import ClientTLS
from devtools.supervise import Supervisor

ROOT = Path(__file__).resolve().parent.parent
PIN = ROOT / "deploy" / "pin.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health_channel(address: str, tls: ClientTLS | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.credentials())


def serving(address: str, tls: ClientTLS | None = None, timeout_s: float = 0.5) -> bool:
    """One health check: does ``address`` answer SERVING now?"""
    with _health_channel(address, tls) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def wait_serving(
    address: str, timeout_s: float, proc: subprocess.Popen | None = None, tls: ClientTLS | None = None
) -> None:
    """Block until ``address`` answers grpc.health.v1 with SERVING (over mTLS with ``tls``)."""
    deadline = time.monotonic() + timeout_s
    with _health_channel(address, tls) as channel:
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
    """A private redis-server on a free port in a temp dir (a supervised process of ``make up``).

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
        self.name = "redis"

    # -- what devtools.supervise needs ------------------------------------------------------

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def launch(self) -> None:
        """Start again on the same port (and directory: a persistent server reloads its entries)."""
        self.start()

    def serving(self) -> bool:
        return self._answers()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

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
    #: Client TLS for the health check when the service requires mutual TLS.
    tls: ClientTLS | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def launch(self) -> None:
        self.start()

    def serving(self) -> bool:
        return serving(self.address, self.tls)

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
    #: Gateway -> inference over mutual TLS with certificates in ``run_dir/tls`` (what ``make up`` runs).
    internal_tls: bool = False
    #: Prometheus /metrics on each service's default port (gateway 9100, inference 9101, cache 9102); off: none.
    metrics: bool = False


class Stack:
    """Redis + inference + cache + gateway as local processes."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        c = config
        self.redis = RedisServer(password=c.redis_password, persist=c.redis_persist, cpus=c.frontend_cpus)
        py = sys.executable
        metrics = (lambda port: ["--metrics-port", str(port)]) if c.metrics else (lambda port: ["--metrics-port", "0"])
        # The inference port answers only clients with a certificate of the internal CA (the gateway's);
        # the cache listens on loopback, as the sidecar does on its pod's.
        self.certs = ensure_internal_certs(c.run_dir / "tls") if c.internal_tls else None
        inference_tls: list[str] = []
        gateway_tls: list[str] = []
        if self.certs is not None:
            inference_tls = ["--tls-cert", self.certs.inference_cert, "--tls-key", self.certs.inference_key,
                             "--tls-client-ca", self.certs.ca]
            gateway_tls = ["--inference-tls-ca", self.certs.ca, "--inference-tls-cert", self.certs.gateway_cert,
                           "--inference-tls-key", self.certs.gateway_key]

        self.inference = ServiceProcess(
            "inference",
            pinned(c.inference_cpus, [py, "-m", "inference_svc", "--host", "127.0.0.1",
                   "--port", str(c.inference_port or free_port()), "--model", c.model,
                   "--model-cache", str(c.model_cache), *metrics(9101), "--log-format", "text",
                   *inference_tls, *c.extra_inference_args]),
            0, c.run_dir / "inference.log",
            # The probe shows the inference's own certificate, as the Kubernetes exec probe does.
            tls=ClientTLS(ca=self.certs.ca, cert=self.certs.inference_cert, key=self.certs.inference_key)
            if self.certs is not None else None,
        )
        self.cache = ServiceProcess(
            "cache",
            pinned(c.frontend_cpus, [py, "-m", "cache_svc", "--host", "127.0.0.1",
                   "--port", str(c.cache_port or free_port()), "--redis-url", self.redis.url,
                   *metrics(9102), "--log-format", "text", *c.extra_cache_args]),
            0, c.run_dir / "cache.log",
        )
        for svc in (self.inference, self.cache):
            svc.port = int(svc.argv[svc.argv.index("--port") + 1])
        self.gateway = ServiceProcess(
            "gateway",
            pinned(c.frontend_cpus, [py, "-m", "gateway", "--host", "127.0.0.1",
                   "--port", str(c.gateway_port or free_port()), "--cache-target", self.cache.address,
                   "--inference-target", self.inference.address, *metrics(9100),
                   "--log-format", "text", *gateway_tls, *c.extra_gateway_args]),
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
                wait_serving(svc.address, self.config.ready_timeout_s, svc.proc, svc.tls)
            except Exception as exc:
                tail = svc.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{svc.name} did not become ready: {exc}\n--- {svc.log_path} ---\n{tail}") from exc
        return self

    def restart(self, svc: ServiceProcess, timeout_s: float | None = None) -> None:
        """Start ``svc`` again (after a kill or stop) on its port and wait until it is SERVING."""
        if svc.alive():
            svc.stop()
        svc.start()
        wait_serving(svc.address, self.config.ready_timeout_s if timeout_s is None else timeout_s, svc.proc, svc.tls)

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


def model_ready(model: str, cache_dir: Path) -> bool:
    """Whether ``cache_dir`` holds a converted copy of ``model`` (what ``make up`` checks before prepare).

    Cheap: names on disk, no weights read. A copy in another format than this CPU
    picks still counts: the service converts the missing one at its first start.
    """
    from inference_svc.runtime import model_source

    try:
        source = model_source.resolve(model, cache_dir)
    except Exception:
        return False
    return bool(model_source.converted_variants(cache_dir, source))


def _grpcurl() -> str:
    """The grpcurl of the dev dependencies (.venv/bin/grpcurl), as a path a shell finds from here."""
    exe = Path(sys.executable).parent / "grpcurl"
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


def _print_up(stack: Stack, token: str | None = None) -> None:
    gw = stack.gateway.address
    g = _grpcurl()
    auth = f" -H 'authorization: Bearer {token}'" if token else ""
    certs = stack.certs
    inference_call = f"{g} -plaintext -d '{{}}' {stack.inference.address} reprise.inference.v1.Inference/ModelInfo"
    internal = "plaintext (StackConfig.internal_tls off)"
    if certs is not None:
        rel = lambda p: os.path.relpath(p)  # noqa: E731
        inference_call = (f"{g} -cacert {rel(certs.ca)} -cert {rel(certs.gateway_cert)} -key {rel(certs.gateway_key)} "
                          f"-d '{{}}' {stack.inference.address} reprise.inference.v1.Inference/ModelInfo")
        internal = (f"gateway -> inference over mutual TLS (certificates in {os.path.relpath(certs.directory)}); "
                    "cache and redis on loopback")
    metrics = ("http://127.0.0.1:9100/metrics (gateway), :9101 (inference), :9102 (cache)"
               if stack.config.metrics else "off")
    pids = lambda p: f"pid {p.pid}" if p.pid else ""  # noqa: E731
    print(
        f"""
Reprise is up (Ctrl-C stops everything; a process that dies is restarted):
  gateway    {gw}   (public API: reprise.gateway.v1.Gateway; {pids(stack.gateway)})
  cache      {stack.cache.address}   (reprise.cache.v1.Cache; {pids(stack.cache)})
  inference  {stack.inference.address}   (reprise.inference.v1.Inference; {pids(stack.inference)})
  redis      {stack.redis.url}   ({pids(stack.redis)})
  internal   {internal}
  auth       {"bearer token required (make up TOKENS=...)" if token else "off: every call is tenant 'public'"}
  metrics    {metrics}
  logs       {stack.config.run_dir}/*.log
  cpus       inference {stack.config.inference_cpus or "unpinned"}, gateway/cache/redis {stack.config.frontend_cpus or "unpinned"}
             (deploy/pin.sh, as in the Kubernetes entrypoint; --no-pin to turn off)

Try:
  {g} -plaintext {gw} list
  {g} -plaintext{auth} -d '{{"text": "I love this phone"}}' {gw} reprise.gateway.v1.Gateway/Classify
  {g} -plaintext{auth} -d '{{"text": "这家餐厅的菜太难吃了"}}' {gw} reprise.gateway.v1.Gateway/Analyze
  {g} -plaintext{auth} -d '{{"text": "What is a cache?"}}' {gw} reprise.gateway.v1.Gateway/ChatStream
  {inference_call}
  {g} -plaintext -d '{{}}' {stack.cache.address} reprise.cache.v1.Cache/Stats
""",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.devstack", description="Run the local stack.")
    parser.add_argument("command", choices=["up", "model-ready"],
                        help="up: start everything and stay in the foreground; model-ready: exit 0 when a converted copy exists")
    parser.add_argument("--model", default=os.environ.get("REPRISE_MODEL", "default"))
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".models", help="converted model copies")
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run", help="logs, Redis files, internal certificates")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("REPRISE_GATEWAY_PORT", "50050")))
    parser.add_argument("--tokens", default=os.environ.get("REPRISE_UP_TOKENS", ""),
                        help="token=tenant[,token=tenant...]: the gateway requires one of these bearer tokens")
    parser.add_argument("--no-metrics", action="store_true", help="no /metrics ports (9100-9102 taken by something else)")
    parser.add_argument("--inference-cpus", default=os.environ.get("REPRISE_UP_INFERENCE_CPUS", "auto"),
                        help="CPU list for the inference service; 'auto': all but the first quarter of the CPUs")
    parser.add_argument("--frontend-cpus", default=os.environ.get("REPRISE_UP_FRONTEND_CPUS", "auto"),
                        help="CPU list for gateway, cache and Redis; 'auto': the first quarter (at least one)")
    parser.add_argument("--no-pin", action="store_true", help="run every process unpinned")
    args = parser.parse_args(argv)
    if args.command == "model-ready":
        ready = model_ready(args.model, args.model_cache)
        print(f"{args.model}: {'a converted copy is' if ready else 'no converted copy'} in {args.model_cache}", flush=True)
        sys.exit(0 if ready else 1)
    front, infer = ("", "") if args.no_pin else plan_cpus()
    token = args.tokens.split(",")[0].partition("=")[0].strip() if args.tokens else None
    config = StackConfig(
        model=args.model,
        model_cache=args.model_cache,
        run_dir=args.run_dir,
        gateway_port=args.gateway_port,
        inference_cpus="" if args.no_pin else (infer if args.inference_cpus == "auto" else args.inference_cpus),
        frontend_cpus="" if args.no_pin else (front if args.frontend_cpus == "auto" else args.frontend_cpus),
        internal_tls=True,
        metrics=not args.no_metrics,
        # Redis keeps an append-only file: a restarted Redis (supervised below) serves the same entries.
        redis_persist=True,
        extra_gateway_args=("--tokens", args.tokens) if args.tokens else (),
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    print("starting redis, inference (first start converts the model: ~1 min), cache, gateway ...", flush=True)
    try:
        with running_stack(config) as stack:
            _print_up(stack, token)
            supervisor = Supervisor([stack.redis, *stack.services])
            while not stop:
                supervisor.poll()
                time.sleep(0.25)
    except KeyboardInterrupt:
        pass
    print("stopped.", flush=True)


if __name__ == "__main__":
    main()
