"""devtools/devstack.py's deploy-facing parts: the CPU plan `make up` uses, pinning through
deploy/pin.sh, and a Redis that keeps its entries across a restart (as the StatefulSet's does)."""

from __future__ import annotations

import os
import sys
import time

import pytest
import redis

from devtools.devstack import RedisServer, ServiceProcess, compress_cpus, pinned, plan_cpus, rss_bytes

pytestmark = pytest.mark.integration
LAST = max(os.sched_getaffinity(0))


def test_cpu_plan_gives_inference_cores_of_its_own() -> None:
    assert plan_cpus([0]) == ("", "")  # nothing to split
    assert plan_cpus([0, 1]) == ("0", "1")
    assert plan_cpus(range(8)) == ("0-1", "2-7")
    assert plan_cpus([4, 5, 6, 7, 12, 13, 14, 15]) == ("4-5", "6-7,12-15")
    assert compress_cpus([3, 1, 2, 9]) == "1-3,9"
    assert pinned("", ["x"]) == ["x"] and pinned("1", ["x"])[1:] == ["1", "--", "x"]


def test_pinned_processes_run_on_their_cpus(tmp_path) -> None:
    svc = ServiceProcess("probe", pinned(str(LAST), [sys.executable, "-c", "import time; time.sleep(30)"]), 0,
                         tmp_path / "probe.log")
    svc.start()
    try:
        for _ in range(200):  # until pin.sh -> numactl/taskset -> python have exec'd (same pid)
            status = open(f"/proc/{svc.pid}/status").read()
            argv = open(f"/proc/{svc.pid}/cmdline").read().split("\0")
            if argv[:2] == [sys.executable, "-c"]:
                break
            time.sleep(0.05)
        assert f"Cpus_allowed_list:\t{LAST}\n" in status
        assert rss_bytes(svc.pid) > 0
    finally:
        assert svc.kill() is not None
    # numactl where installed and permitted, else the taskset fallback: both log the CPUs they pinned.
    log = (tmp_path / "probe.log").read_text()
    assert log.startswith("reprise-pin: ") and f"cpus {LAST} (1)" in log, log


def test_persistent_redis_keeps_entries_across_a_restart() -> None:
    server = RedisServer(persist=True, password="s3cret", cpus=str(LAST)).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("reprise:drill", "kept")
        server.restart()
        assert redis.Redis.from_url(server.url).get("reprise:drill") == b"kept"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, password="wrong").ping()
    finally:
        server.stop()


def test_make_up_serves_metrics_and_authenticates_the_internal_hop(tmp_path) -> None:
    """What `make up` configures (issue 24, items 2 and 8): /metrics on the documented ports, the cache on
    loopback, inference requiring the gateway's certificate from run_dir/tls."""
    from devtools.devstack import Stack, StackConfig

    stack = Stack(StackConfig(run_dir=tmp_path, internal_tls=True, metrics=True))
    try:
        flag = lambda svc, name: svc.argv[svc.argv.index(name) + 1]  # noqa: E731
        assert [flag(s, "--metrics-port") for s in (stack.gateway, stack.inference, stack.cache)] == ["9100", "9101", "9102"]
        assert flag(stack.cache, "--host") == "127.0.0.1"
        certs = stack.certs
        assert certs is not None and certs.complete() and certs.directory == tmp_path / "tls"
        assert flag(stack.inference, "--tls-client-ca") == certs.ca
        assert flag(stack.gateway, "--inference-tls-cert") == certs.gateway_cert
        assert stack.inference.tls is not None and stack.inference.tls.cert == certs.inference_cert
        plain = Stack(StackConfig(run_dir=tmp_path / "plain"))
        assert flag(plain.gateway, "--metrics-port") == "0" and "--tls-client-ca" not in plain.inference.argv
        plain.redis.stop()
    finally:
        stack.redis.stop()


def test_model_ready_sees_a_converted_copy_without_reading_weights(tmp_path) -> None:
    from inference_svc.runtime import model_source
    from devtools.devstack import model_ready

    assert not model_ready("default", tmp_path)
    source = model_source.resolve("default", tmp_path)
    model_source.converted_dir(tmp_path, source, "hf-int4-bf16").mkdir(parents=True)
    assert model_ready("default", tmp_path)
    assert not model_ready(str(tmp_path / "missing-model"), tmp_path)
