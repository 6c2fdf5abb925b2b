"""--cpus really pins the process: ModelInfo and the kernel's view agree on one CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from devtools.devstack import free_port, wait_serving
from reprise.inference.v1 import inference_pb2 as pb
from reprise.inference.v1 import inference_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[3]


def _allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def test_cpus_flag_pins_process_and_sizes_threads(tiny_model_dir: Path, tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    port = free_port()
    log = (tmp_path / "inference.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_svc", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
         "--model", str(tiny_model_dir), "--model-cache", str(tmp_path / "cache"), "--cpus", str(cpu),
         "--log-format", "text"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", 120, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = pb_grpc.InferenceStub(channel).ModelInfo(pb.ModelInfoRequest(), timeout=10)
        assert list(info.cpus) == [cpu] and info.threads == 1 and info.interop_threads == 1
        assert _allowed_cpus(proc.pid) == str(cpu)
        text = (tmp_path / "inference.log").read_text()
        assert f"placement: cpus {cpu}, 1 torch threads" in text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_unavailable_cpu_is_refused(tmp_path: Path) -> None:
    bad = max(os.sched_getaffinity(0)) + 64
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "inference_svc", "--cpus", str(bad), "--port", "0"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "--cpus" in result.stderr and "not available" in result.stderr
    assert time.perf_counter() - start < 120


def test_flags_that_cannot_serve_together_exit_with_a_usage_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Found while loading (after the precision choice), yet reported like any bad flag: one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "inference_svc", "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", "0",
         "--model", str(tiny_model_dir), "--model-cache", str(tmp_path / "cache"), "--dtype", "fp32",
         "--weights", "fp16", "--activations", "int8"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: --activations int8 applies to int4 weights under fp32" in result.stderr
    assert "Traceback" not in result.stderr
