"""The OTLP/gRPC exporter the services ship with really delivers spans (with this protobuf and grpcio),
to the sink make bench-gateway exports to."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.gateway.tracing_cost import otlp_sink


def test_spans_reach_an_otlp_endpoint() -> None:
    with otlp_sink() as (endpoint, sink):
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("request"):
            with tracer.start_as_current_span("stage"):
                pass
        provider.shutdown()
        assert sink.spans == 2
