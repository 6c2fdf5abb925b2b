"""`make up` supervises its processes and authenticates its internal hop (issue 24, items 7 and 2).

Before: a SIGKILL of the cache or a SIGTERM of inference made `make up` stop every
service, and a killed Redis was never restarted and nothing said so. Here the real
`python -m devtools.devstack up` runs (tiny model, unpinned); each fault is one
signal to one process, and the drill checks what a caller of the gateway sees
meanwhile and what the console says.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from devtools.devstack import ROOT, free_port
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc
from reprise.inference.v1 import inference_pb2 as ipb
from reprise.inference.v1 import inference_pb2_grpc as ipb_grpc

pytestmark = pytest.mark.faults

TOKEN = "make-up-token-0123456789abcdef"


@dataclass
class Up:
    proc: subprocess.Popen
    lines: queue.Queue[str]
    seen: list[str]
    banner: str

    def expect(self, pattern: str, timeout_s: float = 120) -> re.Match[str]:
        """The next console line matching ``pattern`` (earlier lines are kept in ``seen``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, f"make up exited ({self.proc.returncode}):\n" + "\n".join(self.seen[-40:])
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} in {timeout_s:.0f}s:\n" + "\n".join(self.seen[-40:]))

    def pid(self, name: str) -> int:
        return int(re.search(rf"^  {name} .*pid (\d+)\)", self.banner, re.M).group(1))  # type: ignore[union-attr]

    def address(self, name: str) -> str:
        return re.search(rf"^  {name} +(127\.0\.0\.1:\d+)", self.banner, re.M).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def up(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    run_dir = tmp_path_factory.mktemp("make-up")
    argv = [sys.executable, "-m", "devtools.devstack", "up", "--model", str(tiny_model_dir),
            "--model-cache", str(tmp_path_factory.mktemp("models")), "--run-dir", str(run_dir), "--no-pin",
            "--no-metrics", "--gateway-port", str(free_port()), "--tokens", f"{TOKEN}=team-up"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    u = Up(proc, lines, [], "")
    try:
        u.expect(r"^Reprise is up", timeout_s=600)
        u.expect(r"reprise.cache.v1.Cache/Stats")  # the last line of the banner
        u.banner = "\n".join(u.seen)
        yield u
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _classify(up: Up, text: str, **policy: bool) -> pb.ClassifyResponse:
    with grpc.insecure_channel(up.address("gateway")) as channel:
        return pb_grpc.GatewayStub(channel).Classify(
            pb.ClassifyRequest(text=text, cache=pb.CachePolicy(**policy)), metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=60,
        )


def _cached(up: Up, text: str) -> None:
    for _ in range(100):
        if _classify(up, text).cache.status == pb.CACHE_STATUS_EXACT:
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never became an exact hit")


def test_the_banner_names_the_dev_grpcurl_and_internal_auth(up: Up) -> None:
    assert ".venv/bin/grpcurl" in up.banner or str(Path(sys.executable).parent / "grpcurl") in up.banner
    assert "mutual TLS" in up.banner and "-cacert" in up.banner and "authorization: Bearer" in up.banner


def test_the_inference_port_refuses_a_client_without_the_gateway_certificate(up: Up) -> None:
    with grpc.insecure_channel(up.address("inference")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            ipb_grpc.InferenceStub(channel).Chat(ipb.ChatRequest(text="hello"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    with grpc.insecure_channel(up.address("gateway")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GatewayStub(channel).Classify(pb.ClassifyRequest(text="no token"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_a_killed_cache_is_restarted_and_the_gateway_keeps_answering(up: Up) -> None:
    os.kill(up.pid("cache"), signal.SIGKILL)
    up.expect(r"\[supervisor\] cache was killed by signal 9; restarting in \d+s")
    assert _classify(up, "the cache is away, the model answers").result.label in (1, 2)
    up.expect(r"\[supervisor\] cache: restarted")
    up.expect(r"\[supervisor\] cache: serving again")
    _cached(up, "stored after the cache came back")


def test_a_killed_redis_is_restarted_and_says_so(up: Up) -> None:
    _cached(up, "stored before redis went away")
    redis_pid = int(re.search(r"^  redis .*pid (\d+)\)", up.banner, re.M).group(1))  # type: ignore[union-attr]
    os.kill(redis_pid, signal.SIGKILL)
    up.expect(r"\[supervisor\] redis was killed by signal 9; restarting")
    assert _classify(up, "redis is away, the model answers").result.label in (1, 2)
    up.expect(r"\[supervisor\] redis: restarted")
    up.expect(r"\[supervisor\] redis: serving again")
    _cached(up, "stored after redis came back")


def test_sigterm_of_inference_restarts_it_and_cached_answers_are_served_meanwhile(up: Up) -> None:
    text = "a cached answer outlives the model process"
    _cached(up, text)
    os.kill(up.pid("inference"), signal.SIGTERM)
    up.expect(r"\[supervisor\] inference exited with code 0; restarting in \d+s")
    assert _classify(up, text).cache.status == pb.CACHE_STATUS_EXACT  # the gateway and cache keep serving
    up.expect(r"\[supervisor\] inference: restarted")
    up.expect(r"\[supervisor\] inference: serving again", timeout_s=300)
    fresh = _classify(up, "the model is back", no_cache=True, no_store=True)
    assert fresh.cache.status == pb.CACHE_STATUS_BYPASS or fresh.cache.status == pb.CACHE_STATUS_MISS
