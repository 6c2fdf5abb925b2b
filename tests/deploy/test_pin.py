"""deploy/pin.sh and deploy/entrypoint.sh: CPU-list derivation, numactl -> taskset fallback, threads.

The scripts run for real (bash, real taskset pinning a real child); what a
machine may lack (NUMA nodes, a permitted numactl, a cgroup) is simulated with
fake sysfs/proc/cgroup trees and a fake ``numactl`` on a controlled PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PIN = ROOT / "deploy" / "pin.sh"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
LIB = ROOT / "deploy" / "lib" / "cpus.sh"
TOOLS = ("bash", "env", "dirname", "grep", "sort", "tr", "sed", "wc", "head", "true", "cat", "paste")
#: Prints what the pinned child sees: its affinity and the thread variables.
PROBE = [sys.executable, "-c", (
    "import os; print(sorted(os.sched_getaffinity(0)), os.environ.get('REPRISE_PINNED_CPUS'), "
    "os.environ.get('REPRISE_THREADS'), os.environ.get('OMP_NUM_THREADS'), os.getpid())"
)]
ALLOWED = sorted(os.sched_getaffinity(0))
LAST = ALLOWED[-1]


def _bin_dir(tmp: Path, *, taskset: bool = True, numactl: str | None = None) -> Path:
    """A PATH holding only the tools the scripts need, plus an optional fake numactl."""
    bin_dir = tmp / "bin"
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    bin_dir.mkdir()
    for tool in TOOLS + (("taskset",) if taskset else ()):
        real = shutil.which(tool)
        assert real, f"{tool} missing on this machine"
        (bin_dir / tool).symlink_to(real)
    if numactl is not None:
        fake = bin_dir / "numactl"
        fake.write_text(numactl)
        fake.chmod(0o755)
    return bin_dir


def _fake_numa(tmp: Path, nodes: dict[int, str]) -> Path:
    sysfs = tmp / "sys"
    for node, cpulist in nodes.items():
        d = sysfs / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpulist + "\n")
    return sysfs


def _run(argv: list[str], tmp: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": str(bin_dir), "REPRISE_PIN_SYSFS": str(tmp / "sys"), "REPRISE_PIN_CGROUP": str(tmp / "cgroup")}
    return subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=60)


def _probe(result: subprocess.CompletedProcess[str]) -> tuple[list[int], str, str, str]:
    assert result.returncode == 0, result.stderr
    affinity, cpus, threads, omp, _pid = result.stdout.rsplit(None, 4)[0], *result.stdout.split()[-4:]
    return eval(affinity), cpus, threads, omp  # noqa: S307 - our own probe's output


# A numactl that records its arguments, then runs the command after "--" (like the real one).
RECORDING_NUMACTL = """#!/usr/bin/env bash
echo "$@" >> "$NUMACTL_LOG"
while [[ $# -gt 0 && $1 != -- && $1 != true ]]; do shift; done
[[ ${1:-} == -- ]] && shift
exec "$@"
"""
# What numactl prints in a container without SYS_NICE.
DENIED_NUMACTL = """#!/usr/bin/env bash
echo "set_mempolicy: Operation not permitted" >&2
exit 1
"""


def test_cpu_list_helpers_expand_and_compress() -> None:
    script = f'source {LIB}; cpus_expand "8,0-2,3,2"; cpus_compress "0 1 2 3 8 10 11"; cpus_expand "3-1" || echo bad'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["0 1 2 3 8", "0-3,8,10-11", "bad"]


def test_fallback_to_taskset_when_numactl_is_not_permitted(tmp_path: Path) -> None:
    _fake_numa(tmp_path, {0: f"0-{LAST}"})
    bin_dir = _bin_dir(tmp_path, numactl=DENIED_NUMACTL)
    result = _run([str(PIN), str(LAST), "--", *PROBE], tmp_path, bin_dir)
    affinity, cpus, threads, omp = _probe(result)
    assert affinity == [LAST] and cpus == str(LAST) and threads == omp == "1"
    assert "numactl is not permitted here (set_mempolicy: Operation not permitted)" in result.stderr
    assert "SYS_NICE" in result.stderr and "falling back to taskset" in result.stderr
    assert "memory not bound" in result.stderr


def test_fallback_when_numactl_is_missing_or_numa_is_invisible(tmp_path: Path) -> None:
    bin_dir = _bin_dir(tmp_path)
    result = _run([str(PIN), str(LAST), "--", *PROBE], tmp_path, bin_dir)
    assert _probe(result)[0] == [LAST]
    assert "numactl is not installed; falling back to taskset" in result.stderr

    other = tmp_path / "other"
    other.mkdir()
    bin_dir = _bin_dir(other, numactl=RECORDING_NUMACTL)
    result = _run([str(PIN), str(LAST), "--", *PROBE], other, bin_dir, NUMACTL_LOG=str(other / "log"))
    assert _probe(result)[0] == [LAST]
    assert "no NUMA topology visible" in result.stderr
    assert not (other / "log").exists()


def test_numactl_binds_the_cpus_and_the_memory_of_their_nodes(tmp_path: Path) -> None:
    _fake_numa(tmp_path, {0: "0-3", 1: "4-7"})
    log = tmp_path / "numactl.log"
    bin_dir = _bin_dir(tmp_path, numactl=RECORDING_NUMACTL)
    result = _run([str(PIN), "2-3,5", "--", "true"], tmp_path, bin_dir, NUMACTL_LOG=str(log),
                  REPRISE_PIN_PROC_STATUS=str(_status(tmp_path, "0-7")))
    assert result.returncode == 0, result.stderr
    dry_run, real = log.read_text().splitlines()
    assert dry_run == "--physcpubind=2-3,5 --membind=0-1 true"
    assert real == "--physcpubind=2-3,5 --membind=0-1 -- true"
    assert "cpus 2-3,5 (3), memory node 0-1, 3 threads: numactl" in result.stderr


def test_numactl_mode_refuses_to_run_unbound(tmp_path: Path) -> None:
    _fake_numa(tmp_path, {0: f"0-{LAST}"})
    bin_dir = _bin_dir(tmp_path, numactl=DENIED_NUMACTL)
    result = _run([str(PIN), str(LAST), "--", "true"], tmp_path, bin_dir, REPRISE_PIN_MODE="numactl")
    assert result.returncode == 69
    assert "REPRISE_PIN_MODE=numactl but numactl is not permitted" in result.stderr


def test_no_pinning_tool_runs_unpinned_and_says_so(tmp_path: Path) -> None:
    bin_dir = _bin_dir(tmp_path, taskset=False)
    result = _run([str(PIN), str(LAST), "--", *PROBE], tmp_path, bin_dir)
    affinity, cpus, threads, _ = _probe(result)
    assert affinity == ALLOWED and threads == "1"
    assert "running UNPINNED" in result.stderr


@pytest.mark.parametrize("cpus", ["", "a", "1-0", "0,,1", "99999"])
def test_bad_or_disallowed_cpu_lists_exit_64(tmp_path: Path, cpus: str) -> None:
    result = _run([str(PIN), cpus, "--", "true"], tmp_path, _bin_dir(tmp_path))
    assert result.returncode == 64
    assert "reprise-pin:" in result.stderr


def test_usage_error_without_separator(tmp_path: Path) -> None:
    result = _run([str(PIN), "0", "true"], tmp_path, _bin_dir(tmp_path))
    assert result.returncode == 64 and "usage:" in result.stderr


def test_threads_capped_by_cgroup_quota_and_preset_variables_respected(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads
    status = _status(tmp_path, "0-7")
    result = _run([str(PIN), "0-7", "--", "env"], tmp_path, _bin_dir(tmp_path), REPRISE_PIN_MODE="none",
                  REPRISE_PIN_PROC_STATUS=str(status), MKL_NUM_THREADS="5")
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert env["REPRISE_THREADS"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["MKL_NUM_THREADS"] == "5"
    assert env["REPRISE_PINNED_CPUS"] == "0-7"


def _status(tmp: Path, cpus: str) -> Path:
    path = tmp / "status"
    path.write_text(f"Name:\tbash\nCpus_allowed:\tff\nCpus_allowed_list:\t{cpus}\nMems_allowed_list:\t0\n")
    return path


def test_entrypoint_derives_cpus_from_affinity_and_cgroup_v2_cpuset(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cpuset.cpus.effective").write_text(f"{LAST}\n")
    result = _run([str(ENTRYPOINT), *PROBE], tmp_path, _bin_dir(tmp_path))
    affinity, cpus, threads, _ = _probe(result)
    assert affinity == [LAST] and cpus == str(LAST) and threads == "1"


def test_entrypoint_reads_cgroup_v1_cpuset_and_the_override(tmp_path: Path) -> None:
    v1 = tmp_path / "cgroup" / "cpuset"
    v1.mkdir(parents=True)
    (v1 / "cpuset.effective_cpus").write_text("2-5,9\n")
    status = _status(tmp_path, "0-9")
    result = _run([str(ENTRYPOINT), "env"], tmp_path, _bin_dir(tmp_path), REPRISE_PIN_MODE="none",
                  REPRISE_PIN_PROC_STATUS=str(status))
    assert "REPRISE_PINNED_CPUS=2-5,9" in result.stdout and "REPRISE_THREADS=5" in result.stdout

    result = _run([str(ENTRYPOINT), "env"], tmp_path, _bin_dir(tmp_path), REPRISE_PIN_MODE="none",
                  REPRISE_PIN_PROC_STATUS=str(status), REPRISE_PIN_CPUS="7")
    assert "REPRISE_PINNED_CPUS=7" in result.stdout and "REPRISE_THREADS=1" in result.stdout


def test_entrypoint_without_cgroup_uses_the_affinity_mask(tmp_path: Path) -> None:
    result = _run([str(ENTRYPOINT), *PROBE], tmp_path, _bin_dir(tmp_path))
    affinity, cpus, threads, _ = _probe(result)
    assert affinity == ALLOWED and threads == str(len(ALLOWED))


def test_exec_chain_keeps_the_pid_so_signals_reach_the_service(tmp_path: Path) -> None:
    proc = subprocess.Popen([str(ENTRYPOINT), *PROBE], env={"PATH": _bin_dir(tmp_path).as_posix(),
                            "REPRISE_PIN_CGROUP": str(tmp_path / "none")}, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert int(out.split()[-1]) == proc.pid
