"""The pure parts of `make bench-peer`: roofline arithmetic, the C bandwidth probe on a small buffer,
the llama.cpp peer's prompt and rate helpers, and the result/doc writers (no llama.cpp needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.inference import bandwidth, peer_batch, peer_bench, peer_server


def test_roofline_is_bytes_per_second_over_bytes_per_token() -> None:
    assert bandwidth.roofline_tok_s(1e9, 20.0) == pytest.approx(20.0)
    assert bandwidth.roofline_tok_s(308_725_760, 34.7) == pytest.approx(112.4, abs=0.05)
    # twice the bandwidth, twice the bound; twice the bytes, half
    assert bandwidth.roofline_tok_s(5e8, 40.0) == pytest.approx(4 * bandwidth.roofline_tok_s(1e9, 20.0))


@pytest.mark.parametrize(("nbytes", "gbps"), [(0, 10.0), (1e9, 0.0), (-1, 10.0), (1e9, math.nan), (math.inf, 10.0)])
def test_roofline_refuses_nonsense(nbytes: float, gbps: float) -> None:
    with pytest.raises(ValueError):
        bandwidth.roofline_tok_s(nbytes, gbps)


def test_default_model_step_bytes_match_the_service_decode_bytes() -> None:
    # ModelDescription.decode_bytes of the default model in int4-bf16 (its load log): 308,725,760
    assert bandwidth.int4_bytes(bandwidth.QWEN_05B_STEP) == 308_725_760 == peer_bench.DEFAULT_DECODE_BYTES


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe")


@pytest.mark.parametrize("simd", [-1, 0, 1])
def test_probe_reads_a_small_buffer_at_a_positive_finite_rate(probe_dir: Path, simd: int) -> None:
    gbps = bandwidth.read_gbps(1, mb=4, runs=2, simd=simd, directory=probe_dir)
    assert math.isfinite(gbps) and gbps > 0


def test_probe_on_every_cpu_and_with_prefetch(probe_dir: Path) -> None:
    n = len(bandwidth.cpus())
    for ahead in (0, bandwidth.KERNEL_AHEAD):
        gbps = bandwidth.read_gbps(n, mb=4, runs=2, ahead=ahead, directory=probe_dir)
        assert math.isfinite(gbps) and gbps > 0
    assert bandwidth.simd_name(0, probe_dir) == "scalar"
    assert bandwidth.simd_name(-1, probe_dir) in ("avx512", "avx2", "scalar")


def test_probe_refuses_more_threads_than_cpus_and_empty_buffers(probe_dir: Path) -> None:
    with pytest.raises(ValueError, match="threads must be"):
        bandwidth.read_gbps(len(bandwidth.cpus()) + 1, mb=4, directory=probe_dir)
    with pytest.raises(ValueError, match="positive buffer"):
        bandwidth.read_gbps(1, mb=0, directory=probe_dir)


def test_probe_is_built_once_per_source(probe_dir: Path) -> None:
    assert bandwidth.build(probe_dir) == bandwidth.build(probe_dir)
    assert len(list(probe_dir.glob("stream_read-*.so"))) == 1


def test_rotated_prompts_differ_and_keep_length() -> None:
    prompts = peer_batch.rotated_prompts([10, 11, 12, 13], 3)
    assert prompts == [[10, 11, 12, 13], [11, 12, 13, 10], [12, 13, 10, 11]]
    with pytest.raises(ValueError, match="at least 5 tokens"):
        peer_batch.rotated_prompts([1, 2, 3, 4], 5)


def test_aggregate_rate_counts_every_sequence() -> None:
    assert peer_batch.aggregate_tok_s(8, 63, 4.2) == pytest.approx(8 * 63 / 4.2)
    with pytest.raises(ValueError):
        peer_batch.aggregate_tok_s(1, 63, 0.0)


def _result() -> dict:
    levels = {str(n): {"decode_tok_s": 50.0 * n ** 0.5, "per_sequence_tok_s": 50.0 / n ** 0.5, "prefill_tok_s": 300.0, "end_to_end_tok_s": 40.0} for n in (1, 4, 8, 16)}
    return {
        "date": "2026-12-07 06:00", "commit": "abc1234", "cpu": "AMD EPYC (family 25 model 17)", "cpu_kind": "amd-epyc-zen4",
        "cpus": [0, 1], "loadavg_start": 0.3, "loadavg_end": 0.4,
        "bandwidth": {
            "simd": "avx512", "buffer_mib": 512, "runs": 7, "read_gbps": {"1": 30.0, "all": 40.0, "2": 40.0},
            "read_gbps_kernel_prefetch": 41.0, "avx2_gbps_all": 39.0, "numpy_sum_gbps_1": 15.0,
            "torch_sum_gbps": {"1": {"best": 16.0, "median": 15.0}, "2": {"best": 20.0, "median": 17.0}},
            "int4_kernel": {"best": 35.0, "median": 33.0, "mb_per_step": 308.7, "threads": 2},
            "roofline": {"decode_bytes": 308_725_760, "gbps": 41.0, "tok_s": 132.8, "tok_s_torch_sum_median": 55.1},
        },
        "llamacpp": {
            "engine": "llama.cpp", "version": "0.3.36", "gguf": "m.gguf", "threads": 2, "prompt_tokens": 32, "new_tokens": 64,
            "rounds": 3, "levels": levels, "speedup": {n: v["decode_tok_s"] / 50.0 for n, v in levels.items()},
        },
    }


def test_result_files_history_and_doc_block(tmp_path: Path) -> None:
    r = _result()
    path = peer_bench.write(r, tmp_path)
    assert path.name == "peer-amd-epyc-zen4.json"
    md = (tmp_path / "peer-amd-epyc-zen4.md").read_text()
    assert "| 8 | 141.4 | 2.83× |" in md and "**132.8 tok/s**" in md
    peer_bench.write(r, tmp_path)
    history = (tmp_path / peer_bench.OWN_HISTORY).read_text().splitlines()  # no HISTORY.md here: its own file
    assert sum(line.startswith("| 2026-12-07 06:00 | amd-epyc-zen4 | abc1234 | peer |") for line in history) == 2
    (tmp_path / peer_bench.HISTORY).write_text("# history\n\n| date | kind | commit | benchmark | headline |\n|---|---|---|---|---|\n")
    peer_bench.write(r, tmp_path)
    row = (tmp_path / peer_bench.HISTORY).read_text().splitlines()[-1]
    assert row.startswith("| 2026-12-07 06:00 | amd-epyc-zen4 | abc1234 | peer | read 30.0 GB/s 1 CPU, 40.0 all; int4 roofline 132.8")
    assert "50.0 / 100.0 / 141.4 / 200.0 at 1 / 4 / 8 / 16 sequences (4.00x one)" in row
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Inference\n\nbefore\n\n{peer_bench.DOC_BEGIN}\nold text\n{peer_bench.DOC_END}\n\nafter\n")
    assert peer_bench.write_doc(r, doc)
    text = doc.read_text()
    assert "old text" not in text and "before" in text and "after" in text and "| 16 | 200.0 | 4.00× |" in text


def test_doc_without_the_block_is_left_alone(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Inference\n")
    assert not peer_bench.write_doc(_result(), doc)
    assert doc.read_text() == "# Inference\n"


def test_markdown_says_when_llamacpp_was_not_measured() -> None:
    r = _result()
    r["llamacpp"] = {"unavailable": "llama-cpp-python is not installed (`make llamacpp`)"}
    assert "not measured (llama-cpp-python is not installed" in peer_bench.markdown(r)
    assert peer_bench.history_row(r).endswith("| peer | read 30.0 GB/s 1 CPU, 40.0 all; int4 roofline 132.8 tok/s |\n")


async def test_server_not_found_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(peer_server, "LOCAL_BINARY", tmp_path / "none")
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    r = await peer_server.run((1,), 1, 8)
    assert r["unavailable"].startswith("no llama-server binary") and "make llama-server" in r["unavailable"]


def test_peer_markdown_points_to_where_the_server_is_measured() -> None:
    assert "inference-concurrency-<cpu kind>.md" in peer_bench.markdown(_result())
