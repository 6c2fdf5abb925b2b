"""--cpus parsing and formatting."""

from __future__ import annotations

import os

import pytest

from inference_svc.runtime.placement import current, format_cpus, parse_cpus


def test_parse_and_format_round_trip() -> None:
    assert parse_cpus("0-3,6") == (0, 1, 2, 3, 6)
    assert parse_cpus(" 2, 0 ,1") == (0, 1, 2)
    assert format_cpus((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert format_cpus(parse_cpus("4")) == "4"


@pytest.mark.parametrize("spec", ["", "a", "3-1", "-1", "0-x"])
def test_bad_cpu_lists_are_refused_with_the_flag_name(spec: str) -> None:
    with pytest.raises(ValueError, match="--cpus"):
        parse_cpus(spec)


def test_current_reads_the_affinity_mask() -> None:
    assert current().cpus == tuple(sorted(os.sched_getaffinity(0)))


def test_prepare_refuses_cpus_it_cannot_have_before_loading_anything() -> None:
    """`python -m inference_svc.prepare` takes the service's --cpus and fails fast on a bad one."""
    import subprocess
    import sys

    bad = max(os.sched_getaffinity(0)) + 1000
    proc = subprocess.run(
        [sys.executable, "-m", "inference_svc.prepare", "--cpus", str(bad), "--model-cache", "/nonexistent"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"CPUs [{bad}] are not available" in proc.stderr
