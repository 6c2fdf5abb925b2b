"""The load generator against real servers: ghz-format report, cache status per pass, CLI, pacing, connections."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from bench.load import CACHE_OFF, with_cache_policy
from bench.loadgen.config import config_from_dict, load_config
from bench.loadgen.procs import run_procs
from bench.loadgen.report import build_report
from bench.loadgen.rpc import resolve_method
from bench.loadgen.runner import run_load
from reprise.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GW = "reprise.gateway.v1.Gateway"


def _config(host: str, call: str, texts: list[str], **extra: object):  # type: ignore[no-untyped-def]
    return config_from_dict({"call": f"{GW}.{call}", "host": host, "insecure": True, "concurrency": 2,
                             "total": len(texts) * 3, "data": [{"text": t} for t in texts], **extra})


async def _report(cfg, reflection: bool = True):  # type: ignore[no-untyped-def]
    method = await asyncio.to_thread(resolve_method, cfg, reflection=reflection)
    return build_report(await run_load(cfg, method))


async def test_classify_report_counts_hits_per_pass(gateway_host) -> None:
    texts = [f"load test review number {i}, quite good" for i in range(6)]
    report = await _report(_config(gateway_host.address, "Classify", texts))
    assert report["count"] == 18 and report["statusCodeDistribution"] == {"OK": 18}
    assert isinstance(report["total"], int) and report["rps"] > 0
    assert report["fastest"] <= report["latencyDistribution"][2]["latency"] <= report["slowest"]
    passes = report["reprise"]["cache"]["perPass"]
    assert [p["requests"] for p in passes] == [6, 6, 6]
    assert passes[0]["distribution"].get("MISS", 0) >= 4  # first sight of each text (2 may race a write-back)
    assert passes[2]["hitRatio"] == 1.0  # by the third pass every text is cached
    assert report["reprise"]["method"] == f"{GW}.Classify"


async def test_cache_off_policy_bypasses_the_cache(gateway_host) -> None:
    cfg = _config(gateway_host.address, "Classify", ["cache off run text"])
    cfg = cfg.with_overrides(data=with_cache_policy(cfg.data, CACHE_OFF), total=4)
    report = await _report(cfg)
    assert report["reprise"]["cache"]["fields"] == {"cache": {"BYPASS": 4}}


async def test_stream_reports_time_to_first_message(gateway_host) -> None:
    report = await _report(_config(gateway_host.address, "ChatStream", ["stream me a load test reply"]))
    assert report["statusCodeDistribution"] == {"OK": 3}
    first = {d["percentage"]: d["latency"] for d in report["reprise"]["firstMessageLatencyDistribution"]}
    assert 0 < first[50] <= report["slowest"]


async def test_errors_use_ghz_status_names_and_error_strings(gateway_host) -> None:
    report = await _report(_config(gateway_host.address, "Classify", ["   "], **{"count-errors": True}))
    assert report["statusCodeDistribution"] == {"InvalidArgument": 3}
    assert report["errorDistribution"] == {"rpc error: code = InvalidArgument desc = text: must not be empty": 3}
    assert report["fastest"] > 0  # count-errors: the failed calls are in the statistics


async def test_rps_paces_the_starts(gateway_host) -> None:
    cfg = _config(gateway_host.address, "Classify", ["paced text"], rps=40, total=20)
    start = time.perf_counter()
    report = await _report(cfg)
    assert report["count"] == 20
    assert time.perf_counter() - start >= 19 / 40 * 0.95


async def test_duration_stops_the_run(gateway_host) -> None:
    cfg = _config(gateway_host.address, "Classify", ["timed text"], duration="300ms", rps=20)
    report = await _report(cfg)
    assert report["endReason"] == "timeout"
    assert 3 <= report["count"] <= 10


async def test_connections_are_separate_tcp_connections() -> None:
    """ghz's `connections`: workers spread over that many distinct connections (no shared subchannel)."""
    peers: list[str] = []

    async def classify(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        peers.append(context.peer())
        return pb.ClassifyResponse(cache=pb.CacheInfo(status=pb.CACHE_STATUS_EXACT)).SerializeToString()

    handler = grpc.method_handlers_generic_handler(GW, {"Classify": grpc.unary_unary_rpc_method_handler(classify)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        cfg = _config(f"127.0.0.1:{port}", "Classify", ["x"], concurrency=6, connections=3, total=30)
        report = await _report(cfg, reflection=True)  # no reflection service here: falls back to local protos
        assert report["reprise"]["cache"]["hitRatio"] == 1.0
        assert len(set(peers)) == 3
    finally:
        await server.stop(0)


async def test_processes_share_one_run_and_warm_up_unreported(gateway_host) -> None:
    """bench.loadgen.procs (make bench-gateway): k processes send each request number once, start together,
    and their warm-up calls are not reported; the server CPU probe is read around the measured phase only."""
    cfg = _config(gateway_host.address, "Classify", [f"procs {i}" for i in range(5)], concurrency=4, total=30)
    probes = iter([{"server": 1.0}, {"server": 3.5}])
    run, cpu = await asyncio.to_thread(run_procs, cfg, procs=2, warmup=2, cpu_probe=lambda: next(probes))
    assert sorted(r.request_number for r in run.results) == list(range(30))
    assert all(r.status == "OK" for r in run.results) and cpu == {"server": 2.5}
    report = build_report(run)
    assert report["count"] == 30 and report["options"]["concurrency"] == 4 and run.client_cpu_s > 0


async def test_cli_writes_report_and_plot(gateway_host, tmp_path: Path) -> None:
    config = tmp_path / "classify.json"
    raw = json.loads((ROOT / "deploy" / "ghz" / "classify.json").read_text())
    raw["data"] = raw["data"][:10]
    config.write_text(json.dumps(raw))
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", "--config", str(config), "--host", gateway_host.address,
        "-n", "20", "-c", "4", "--connections", "2", "--skip-first", "0", "-o", str(out), "--plot", str(png),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    report = json.loads(out.read_text())
    assert report["count"] == 20 and report["options"]["concurrency"] == 4
    assert "20 calls in" in stderr.decode() and "req/s" in stderr.decode()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_a_bad_config(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"call": f"{GW}.Classify", "concurency": 3}))
    result = subprocess.run([sys.executable, "-m", "bench.load", "--config", str(config), "--host", "127.0.0.1:1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "concurency: not a ghz config key" in result.stderr
    assert load_config(ROOT / "deploy" / "ghz" / "chat.json").timeout_s == 120


async def test_docker_healthcheck_script_reports_serving_and_unreachable(cache_host) -> None:
    async def run(address: str) -> int:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "deploy" / "healthcheck.py"), address,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert address.encode() in err  # the script says what it saw
        return proc.returncode

    assert await run(cache_host.address) == 0
    from devtools.devstack import free_port

    assert await run(f"127.0.0.1:{free_port()}") == 1


async def test_internal_channels_balance_over_every_resolved_address() -> None:
    """The service config the gateway uses towards inference round-robins, so a headless
    Service (one DNS name, one address per pod) spreads calls over all pods."""
    from reprise.rpc.channel import channel_options, retry_service_config

    hits: Counter[int] = Counter()
    servers, ports = [], []
    for k in range(2):
        async def classify(request: bytes, context: grpc.aio.ServicerContext, k: int = k) -> bytes:
            hits[k] += 1
            return pb.ClassifyResponse().SerializeToString()

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            GW, {"Classify": grpc.unary_unary_rpc_method_handler(classify)}),))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        async with grpc.aio.insecure_channel(target, options=channel_options(service_config=retry_service_config([GW]))) as ch:
            call = ch.unary_unary(f"/{GW}/Classify")
            for _ in range(20):
                await call(b"", timeout=10)
        assert hits[0] >= 5 and hits[1] >= 5, hits
    finally:
        for server in servers:
            await server.stop(0)
