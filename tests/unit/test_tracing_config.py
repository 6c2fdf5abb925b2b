"""reprise.tracing: what the OTEL_* environment turns on, the no-op path, and spans laid out from timings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cache_svc.core.types import LookupResult, Tier
from cache_svc.spans import lookup_spans
from inference_svc.core.engine import ChatChunk
from inference_svc.spans import chat_spans
from reprise import tracing
from reprise.domain import Finish, Usage
from reprise.rpc.interceptors import _incoming_request_id


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp")),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "TRUE"}, ()),
    ],
)
def test_off_unless_the_environment_names_an_exporter_or_endpoint(env: dict[str, str], exporters: tuple[str, ...]) -> None:
    config = tracing.TracingConfig.from_env(env, "gateway")
    assert config.exporters == exporters
    assert config.enabled == bool(exporters)
    assert config.service_name == "reprise-gateway"


def test_service_name_from_the_environment() -> None:
    assert tracing.TracingConfig.from_env({"OTEL_SERVICE_NAME": "edge"}, "gateway").service_name == "edge"


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "jaeger"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "grpc"),
    ],
)
def test_unsupported_settings_are_refused_by_name(env: dict[str, str], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        tracing.TracingConfig.from_env(env, "cache")
    with pytest.raises(SystemExit, match="tracing"):
        tracing.setup("cache", env)


def test_setup_with_nothing_set_installs_nothing() -> None:
    assert tracing.setup("cache", {}) is None
    assert not tracing.enabled()
    assert tracing.server_interceptors() == [] and tracing.propagation() == ()


def test_off_spans_are_shared_no_ops() -> None:
    with tracing.span("x", {"a": 1}) as s:
        assert not s.is_recording()
    assert tracing.current_trace_id() is None
    tracing.annotate({"a": 1})  # nothing to annotate, no error
    assert not tracing.record("y", 1, 2).is_recording()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = tracing.install_in_memory()
    yield exporter
    tracing.uninstall()


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "from-the-caller"),)


def test_the_request_id_is_the_trace_id_when_tracing(exporter: InMemorySpanExporter) -> None:
    assert _incoming_request_id(_Context()) == "from-the-caller"  # type: ignore[arg-type]  # outside a span
    with tracing.span("request") as s:
        trace_id = f"{s.get_span_context().trace_id:032x}"
        assert _incoming_request_id(_Context()) == trace_id  # type: ignore[arg-type]
    tracing.uninstall()
    assert _incoming_request_id(_Context()) == "from-the-caller"  # type: ignore[arg-type]


def test_cache_stages_become_spans_end_to_end_in_their_order(exporter: InMemorySpanExporter) -> None:
    stages = {"normalize": 0.1, "exact": 0.4, "embed": 2.0, "search": 0.5, "fetch": 0.3, "guard": 0.2}
    result = LookupResult(Tier.SEMANTIC, "k", 0.93, None, stage_ms=stages)
    start = 1_000_000_000
    with tracing.span("Lookup"):
        lookup_spans(start, "tenant-a", result)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    order = ["cache.normalize", "cache.exact", "cache.semantic.embed", "cache.semantic.search", "cache.semantic.fetch", "cache.verify"]
    assert [spans[n].start_time for n in order] == sorted(spans[n].start_time for n in order)
    assert spans["cache.normalize"].start_time == start
    assert spans["cache.verify"].end_time == start + int(sum(stages.values()) * 1e6)
    semantic = spans["cache.semantic"]
    for name in ("cache.semantic.embed", "cache.semantic.search", "cache.semantic.fetch"):
        assert spans[name].parent.span_id == semantic.context.span_id
    assert spans["cache.exact"].parent.span_id == spans["Lookup"].context.span_id
    assert semantic.attributes[tracing.SIMILARITY] == pytest.approx(0.93)
    assert spans["Lookup"].attributes[tracing.CACHE_TIER] == "semantic"
    assert all(s.attributes[tracing.NAMESPACE] == "tenant-a" for s in spans.values())


def test_chat_phases_follow_each_other_with_token_counts(exporter: InMemorySpanExporter) -> None:
    last = ChatChunk("", Finish.STOP, Usage(prompt_tokens=12, cached_tokens=4, completion_tokens=7), prefill_ms=5.0, decode_ms=20.0)
    with tracing.span("ChatStream"):
        chat_spans(2_000_000_000, 1.5, last)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    queue, prefill, decode = spans["inference.queue"], spans["inference.prefill"], spans["inference.decode"]
    assert queue.end_time == prefill.start_time == 2_000_000_000 + 1_500_000
    assert decode.start_time == prefill.end_time and decode.end_time - decode.start_time == 20_000_000
    assert prefill.attributes[tracing.PROMPT_TOKENS] == 12 and prefill.attributes[tracing.CACHED_TOKENS] == 4
    assert decode.attributes[tracing.COMPLETION_TOKENS] == 7
    assert spans["ChatStream"].attributes[tracing.COMPLETION_TOKENS] == 7


def test_setup_samples_one_percent_of_new_traces_unless_the_environment_names_a_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing.trace, "set_tracer_provider", lambda provider: None)  # keep the process global clean
    try:
        provider = tracing.setup("gateway", {"OTEL_TRACES_EXPORTER": "console"})
        assert provider is not None and tracing.enabled()
        assert f"TraceIdRatioBased{{{tracing.DEFAULT_SAMPLE_RATIO}}}" in provider.sampler.get_description()
        assert tracing.DEFAULT_SAMPLE_RATIO == 0.01
        assert "ParentBased" in provider.sampler.get_description()
        provider.shutdown()
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")  # the SDK reads it from the process environment
        provider = tracing.setup("gateway", {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_on"})
        assert provider is not None and provider.sampler.get_description() == "AlwaysOnSampler"
        provider.shutdown()
    finally:
        tracing.uninstall()


def test_nothing_is_recorded_below_an_unsampled_span(exporter: InMemorySpanExporter) -> None:
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    with trace.use_span(unsampled):
        with tracing.span("child") as child:
            assert not child.is_recording()
        assert not tracing.start("later").is_recording()
        assert not tracing.record("stage", 1, 2).is_recording()
    assert exporter.get_finished_spans() == ()


def test_propagation_carries_the_current_span_sampled_or_not(exporter: InMemorySpanExporter) -> None:
    assert tracing.propagation() == ()  # no current span: nothing to continue
    with tracing.span("request") as s:
        ctx = s.get_span_context()
        assert ctx.trace_flags.sampled
        assert tracing.propagation() == (("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"),)
    unsampled = trace.NonRecordingSpan(trace.SpanContext(trace_id=5, span_id=6, is_remote=False, trace_flags=trace.TraceFlags(0)))
    with trace.use_span(unsampled):
        assert tracing.propagation() == (("traceparent", f"00-{5:032x}-{6:016x}-00"),)
