"""Trace receiver and store: OTLP export in, indented trees out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from mesh.network.tracestore import SpanRecord, TraceStore, render_tree, start_receiver


def emit_spans(port: int) -> str:
    """Export a three-span trace over OTLP/gRPC and return its trace id."""
    providers = {}
    for service in ("labs", "notify"):
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers[service] = provider
    labs = providers["labs"].get_tracer("test")
    notify = providers["notify"].get_tracer("test")
    with labs.start_as_current_span("RecordResult") as root:
        with labs.start_as_current_span("hin.labs.events.v1 publish"):
            with notify.start_as_current_span("hin.labs.events.v1 process") as span:
                span.set_status(Status(StatusCode.ERROR, "handler failed"))
    for provider in providers.values():
        provider.shutdown()
    return format(root.get_span_context().trace_id, "032x")


async def export_spans(state_dir: Path) -> str:
    """Run a receiver and export a trace to it from another thread."""
    server, port = await start_receiver(state_dir)
    try:
        # The exporter blocks until the receiver responds, and the receiver
        # runs on this event loop, so the spans are emitted from a thread.
        return await asyncio.to_thread(emit_spans, port)
    finally:
        await server.stop(None)


@pytest.fixture
async def stored(tmp_path: Path) -> tuple[TraceStore, str]:
    trace_id = await export_spans(tmp_path)
    return TraceStore(tmp_path / "traces"), trace_id


async def test_receiver_stores_every_span(stored: tuple[TraceStore, str]) -> None:
    store, trace_id = stored
    spans = store.trace(trace_id)
    assert sorted(span.name for span in spans) == [
        "RecordResult",
        "hin.labs.events.v1 process",
        "hin.labs.events.v1 publish",
    ]
    assert {span.service for span in spans} == {"labs", "notify"}


async def test_tree_indents_children(stored: tuple[TraceStore, str]) -> None:
    store, trace_id = stored
    lines = render_tree(store.trace(trace_id))
    indents = [len(line) - len(line.lstrip()) for line in lines]
    assert indents == [0, 2, 4]
    assert lines[0].startswith("labs  RecordResult  ")
    assert lines[1].strip().startswith("labs  hin.labs.events.v1 publish  ")
    assert lines[2].strip().startswith("notify  hin.labs.events.v1 process  ")
    assert lines[2].endswith("ERROR (handler failed)")


async def test_summary_counts_errors(stored: tuple[TraceStore, str]) -> None:
    store, trace_id = stored
    [summary] = [s for s in store.summaries() if s.trace_id == trace_id]
    assert summary.spans == 3
    assert summary.errors == 1
    assert summary.root == "labs: RecordResult"


async def test_trace_found_by_prefix(stored: tuple[TraceStore, str]) -> None:
    store, trace_id = stored
    assert len(store.trace(trace_id[:8])) == 3


def test_orphan_span_rendered_as_root() -> None:
    orphan = SpanRecord(
        trace_id="ab" * 16,
        span_id="01" * 8,
        parent_span_id="ff" * 8,
        name="consume",
        service="notify",
        start_ns=0,
        end_ns=2_500_000,
        status="OK",
    )
    assert render_tree([orphan]) == ["notify  consume  2.5 ms  OK"]
