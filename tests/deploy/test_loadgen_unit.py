"""The load generator's pure parts: ghz config parsing, templates, ghz report statistics, the mixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.loadgen import mix
from bench.loadgen.config import ConfigError, config_from_dict, load_config, parse_duration, split_call
from bench.loadgen.report import build_report, ghz_histogram, ghz_percentiles
from bench.loadgen.rpc import resolve_method
from bench.loadgen.runner import CallResult, RunResult
from bench.loadgen.templates import CallData, Template

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
GHZ = ROOT / "deploy" / "ghz"
CALL = "reprise.gateway.v1.Gateway.Classify"


@pytest.mark.parametrize(("text", "seconds"), [("20s", 20), ("1m30s", 90), ("250ms", 0.25), ("0", 0), ("1h", 3600)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "timeout") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["20", "s", "1x", "10s5"])
def test_bad_durations_name_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match="^timeout: "):
        parse_duration(bad, "timeout")


def test_call_forms() -> None:
    assert split_call("a.b.Svc.Method") == ("a.b.Svc", "Method")
    assert split_call("a.b.Svc/Method") == ("a.b.Svc", "Method")
    with pytest.raises(ConfigError, match="^call: "):
        split_call("Method")


def test_defaults_follow_ghz() -> None:
    cfg = config_from_dict({"call": CALL, "data": {"text": "x"}})
    assert (cfg.total, cfg.concurrency, cfg.connections, cfg.timeout_s, cfg.duration_stop) == (200, 50, 1, 20.0, "close")
    assert cfg.data == ({"text": "x"},) and not cfg.insecure and not cfg.count_errors


@pytest.mark.parametrize(("raw", "message"), [
    ({"call": CALL, "totl": 5}, "totl: not a ghz config key"),
    ({"call": CALL, "concurrency": 4, "connections": 5}, "connections: must be in"),
    ({"call": CALL, "concurrency": 10, "total": 5}, "total: 5 is below concurrency 10"),
    ({"call": CALL, "data": []}, "data: must be an object or a non-empty array"),
    ({"call": CALL, "data": [{"text": "{{.Nope}}"}]}, r"data\[0\].text: unsupported template action"),
    ({"call": CALL, "duration-stop": "later"}, "duration-stop: 'later'"),
    ({"data": {}}, "call: missing"),
])
def test_invalid_configs_say_which_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_data_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    (tmp_path / "cfg.json").write_text(json.dumps({"call": CALL, "data-file": "data.json", "skipFirst": 3,
                                                   "count-errors": True, "rps": 7, "duration": "2s"}))
    cfg = load_config(tmp_path / "cfg.json")
    assert [d["text"] for d in cfg.data] == ["a", "b"]
    assert (cfg.skip_first, cfg.count_errors, cfg.rps, cfg.duration_s) == (3, True, 7.0, 2.0)


def test_templates_render_per_request() -> None:
    def call(n: int) -> CallData:
        return CallData("0", n, CALL, "Classify", "reprise.gateway.v1.Gateway", "In", "Out", False)

    value = {"text": "order {{.RequestNumber}} by {{ randomString 6 }}", "n": 3, "tags": ["{{.MethodName}}"]}
    a, b = Template.render(value, call(7)), Template.render(value, call(8))
    assert a["text"].startswith("order 7 by ") and len(a["text"]) == len("order 7 by ") + 6
    assert b["text"].startswith("order 8 by ") and a["n"] == 3 and a["tags"] == ["Classify"]
    assert len(Template.render_text("{{newUUID}}", call(1))) == 36
    assert 5 <= int(Template.render_text("{{randomInt 5 6}}", call(1))) < 6


def test_ghz_percentile_rank_rule_and_histogram() -> None:
    lat = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    dist = {d["percentage"]: d["latency"] for d in ghz_percentiles(lat)}
    # ghz: rank floor(p*n/100), minus one when whole: p10 -> index 0, p25 -> 2, p50 -> 4, p99 -> 9.
    assert dist == {10: 1_000_000, 25: 3_000_000, 50: 5_000_000, 75: 8_000_000, 90: 9_000_000,
                    95: 10_000_000, 99: 10_000_000}
    hist = ghz_histogram(lat)
    assert len(hist) == 11 and hist[0]["mark"] == pytest.approx(0.001) and hist[-1]["mark"] == pytest.approx(0.010)
    assert sum(b["count"] for b in hist) == 10 and sum(b["frequency"] for b in hist) == pytest.approx(1)


def _run(results: list[CallResult], **cfg: object) -> RunResult:
    config = config_from_dict({"call": CALL, "concurrency": 1, "total": len(results), "data": [{"text": "a"}, {"text": "b"}], **cfg})
    return RunResult(config, None, results, 2_000_000_000, "normal", 1_700_000_000 * 10**9, 0.5)  # type: ignore[arg-type]


class _Method:
    full_name = CALL
    server_streaming = False


def test_report_has_ghz_fields_units_and_skip_first() -> None:
    ms = 1_000_000
    results = [
        CallResult(0, 1, 50 * ms, "OK", "", {"cache": "MISS"}),
        CallResult(1, 2, 40 * ms, "OK", "", {"cache": "MISS"}),
        CallResult(2, 3, 2 * ms, "OK", "", {"cache": "EXACT"}),
        CallResult(3, 4, 1 * ms, "ResourceExhausted", "rpc error: code = ResourceExhausted desc = full"),
        CallResult(4, 5, 3 * ms, "OK", "", {"cache": "EXACT"}),
    ]
    run = _run(results, skipFirst=1)
    run.method = _Method()  # type: ignore[assignment]
    report = build_report(run)
    for key in ("date", "endReason", "options", "count", "total", "average", "fastest", "slowest", "rps",
                "errorDistribution", "statusCodeDistribution", "latencyDistribution", "histogram", "details"):
        assert key in report
    assert report["count"] == 4 and report["total"] == 2_000_000_000 and report["rps"] == 2.0
    assert report["statusCodeDistribution"] == {"OK": 3, "ResourceExhausted": 1}
    assert report["errorDistribution"] == {"rpc error: code = ResourceExhausted desc = full": 1}
    # Without count-errors the error's 1 ms is not the fastest call.
    assert (report["fastest"], report["slowest"]) == (2 * ms, 40 * ms)
    assert report["average"] == 15 * ms
    cache = report["reprise"]["cache"]
    assert cache["fields"] == {"cache": {"MISS": 1, "EXACT": 2}}
    assert [p["hitRatio"] for p in cache["perPass"]] == [0.0, 1.0, 1.0]
    assert report["details"][0]["status"] == "OK" and report["details"][0]["latency"] == 40 * ms
    assert report["details"][0]["requestNumber"] == 1 and report["details"][0]["cache"] == "MISS"

    counted = build_report(_with_method(_run(results, **{"count-errors": True})))
    assert counted["fastest"] == 1 * ms


def _with_method(run: RunResult) -> RunResult:
    run.method = _Method()  # type: ignore[assignment]
    return run


def test_mix_shares_and_order() -> None:
    for corpus, seed in ((mix.REVIEWS, mix.SEED), (mix.QUESTIONS, mix.SEED + 1)):
        items = mix.build_mix(corpus, seed=seed)
        assert len(items) == 50
        assert {k: sum(i.kind == k for i in items) for k in mix.SHARES} == {"new": 19, "repeat": 21, "paraphrase": 10}
        seen: set[int] = set()
        for item in items:  # repeats and paraphrases only of texts already sent
            assert (item.kind == "new") == (item.source not in seen)
            if item.kind == "paraphrase":
                assert item.text != corpus[item.source][0]
            seen.add(item.source)
        assert len({i.text for i in items}) == 29


def test_committed_ghz_configs_match_the_generator_and_parse() -> None:
    expected = mix.configs()
    assert sorted(p.name for p in GHZ.glob("*.json")) == sorted(expected)
    for name, config in expected.items():
        assert (GHZ / name).read_text() == mix.render(config), f"{name} is stale: run `make ghz-configs`"
        cfg = load_config(GHZ / name)
        assert cfg.count_errors and cfg.skip_first == cfg.concurrency > 0
        assert cfg.connections >= 2  # at least as many connections as gateway replicas (overlay: 2)
        method = resolve_method(cfg, reflection=False)
        for i, item in enumerate(cfg.data):
            method.encode(Template.render(item, None), f"data[{i}]")
    stationary = load_config(GHZ / "classify-stationary.json")
    assert sum("{{.RequestNumber}}" in d["text"] for d in stationary.data) == 19
