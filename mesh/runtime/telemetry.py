"""OpenTelemetry tracer provider for a service process."""

from __future__ import annotations

import logging

from opentelemetry import propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)


def build_tracer_provider(
    *,
    service: str,
    instance_id: str = "0",
    otlp_endpoint: str = "",
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Create a provider that exports to ``exporter`` or to the OTLP endpoint.

    With neither, spans are still created (so trace ids reach logs, events and
    audit records) but nothing is exported.
    """
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "hin",
            "service.instance.id": instance_id,
        }
    )
    provider = TracerProvider(resource=resource)
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install_tracer_provider(provider: TracerProvider) -> None:
    """Make ``provider`` the global one and W3C trace context the propagator."""
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))


def current_trace_id() -> str:
    """Return the hex trace id of the current span, or '' outside any span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
