"""Local OTLP/gRPC trace receiver and the span store behind ``hin traces``.

Services and Envoys export spans with OTLP/gRPC; the receiver appends one JSON
line per span to ``<state>/traces/spans.jsonl``. ``TraceStore`` reads them back
and renders a trace as an indented tree.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

logger = logging.getLogger(__name__)

SPANS_FILE = "spans.jsonl"
#: OTLP status codes (opentelemetry/proto/trace/v1/trace.proto).
STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
#: Span attributes kept in the store; they hold ids and codes, never payloads.
KEPT_ATTRIBUTES = (
    "rpc.method",
    "rpc.service",
    "rpc.grpc.status_code",
    "grpc.status_code",
    "http.status_code",
    "upstream_cluster",
    "messaging.destination.name",
    "messaging.destination",
    "messaging.operation",
    "component",
    "node_id",
)


@dataclass
class SpanRecord:
    """One stored span."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str = ""
    kind: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        """Duration in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6


class SpanFile:
    """Append-only JSON lines file of spans, safe to share between threads."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / SPANS_FILE
        self._lock = threading.Lock()

    def append(self, spans: list[SpanRecord]) -> None:
        """Append ``spans``, one JSON object per line."""
        lines = "".join(json.dumps(span.__dict__) + "\n" for span in spans)
        with self._lock, self.path.open("a") as handle:
            handle.write(lines)


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP TraceService that stores every received span in a ``SpanFile``."""

    def __init__(self, *, spans: SpanFile) -> None:
        self._spans = spans

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        records = list(spans_from_request(request))
        self._spans.append(records)
        logger.debug("stored spans", extra={"count": len(records)})
        return trace_service_pb2.ExportTraceServiceResponse()


async def start_receiver(
    state_dir: Path, address: str = "127.0.0.1:0"
) -> tuple[grpc.aio.Server, int]:
    """Start an OTLP/gRPC receiver on ``address``; return it and its port."""
    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        TraceReceiver(spans=SpanFile(state_dir / "traces")), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the trace receiver to {address}")
    await server.start()
    return server, port


def spans_from_request(
    request: trace_service_pb2.ExportTraceServiceRequest,
) -> Iterator[SpanRecord]:
    """Flatten an OTLP export request into span records."""
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = _attributes(span.attributes)
                yield SpanRecord(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    service=service,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status=STATUS_NAMES.get(span.status.code, "UNSET"),
                    status_message=span.status.message,
                    kind=span.kind,
                    attributes={
                        key: attributes[key]
                        for key in KEPT_ATTRIBUTES
                        if key in attributes
                    },
                )


@dataclass
class TraceSummary:
    """One line of ``hin traces list``."""

    trace_id: str
    root: str
    services: list[str]
    spans: int
    start_ns: int
    duration_ms: float
    errors: int


class TraceStore:
    """Read the spans of ``<state>/traces`` grouped by trace."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / SPANS_FILE

    def spans(self) -> list[SpanRecord]:
        """Return every stored span; a torn last line is skipped."""
        if not self.path.exists():
            return []
        records = []
        with self.path.open() as handle:
            for line in handle:
                try:
                    records.append(SpanRecord(**json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    continue
        return records

    def traces(self) -> dict[str, list[SpanRecord]]:
        """Return {trace id: spans}, in order of first appearance."""
        grouped: dict[str, list[SpanRecord]] = defaultdict(list)
        for span in self.spans():
            grouped[span.trace_id].append(span)
        return dict(grouped)

    def summaries(self) -> list[TraceSummary]:
        """Return one summary per trace, newest first."""
        summaries = []
        for trace_id, spans in self.traces().items():
            roots = _roots(spans)
            start = min(span.start_ns for span in spans)
            end = max(span.end_ns for span in spans)
            summaries.append(
                TraceSummary(
                    trace_id=trace_id,
                    root=f"{roots[0].service}: {roots[0].name}" if roots else "",
                    services=sorted({span.service for span in spans}),
                    spans=len(spans),
                    start_ns=start,
                    duration_ms=(end - start) / 1e6,
                    errors=sum(span.status == "ERROR" for span in spans),
                )
            )
        return sorted(summaries, key=lambda s: s.start_ns, reverse=True)

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """Return the spans of one trace (a unique prefix of the id works)."""
        traces = self.traces()
        matches = [key for key in traces if key.startswith(trace_id.lower())]
        if len(matches) != 1:
            return []
        return traces[matches[0]]


def render_tree(spans: list[SpanRecord]) -> list[str]:
    """Return a trace as indented lines: service, operation, duration, status.

    A span whose parent was not received (not yet exported, or outside the
    mesh) is shown as a root.
    """
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        children[span.parent_span_id].append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: s.start_ns)
    lines: list[str] = []

    def visit(span: SpanRecord, depth: int) -> None:
        status = span.status
        if span.status_message:
            status = f"{status} ({span.status_message})"
        lines.append(
            f"{'  ' * depth}{span.service}  {span.name}  "
            f"{span.duration_ms:.1f} ms  {status}"
        )
        for child in children.get(span.span_id, []):
            visit(child, depth + 1)

    for root in sorted(_roots(spans), key=lambda s: s.start_ns):
        visit(root, 0)
    return lines


def _roots(spans: list[SpanRecord]) -> list[SpanRecord]:
    ids = {span.span_id for span in spans}
    return [span for span in spans if span.parent_span_id not in ids]


def _attributes(items: Any) -> dict[str, Any]:
    return {
        item.key: _value(item.value) for item in items if isinstance(item, KeyValue)
    }


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in {"string_value", "bool_value", "int_value", "double_value"}:
        return getattr(value, kind)
    return str(value) if kind else ""
