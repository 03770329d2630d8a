"""The event bus inside a service host: ordering, tracing, invalid input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from bus_sample import (
    HANDLER,
    NoteServicer,
    SampleBase,
    count_notes,
    effects,
    write_update,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select

from hin.echo.v1 import echo_service_pb2 as pb
from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc
from hin.records.v1 import events_pb2
from mesh.runtime.events import Outbox, outbox_table
from mesh.runtime.server import BuildContext, ServiceHost, ServiceSpec
from mesh.runtime.settings import ServiceSettings
from mesh.runtime.storage import Database

pytestmark = pytest.mark.slow


@dataclass
class RunningService:
    host: ServiceHost
    stub: pb_grpc.EchoServiceStub
    db: Database
    outbox: Outbox
    spans: InMemorySpanExporter


def build(ctx: BuildContext) -> ServiceSpec:
    return ServiceSpec(
        name=ctx.settings.name,
        register=[
            (
                pb_grpc.add_EchoServiceServicer_to_server,
                NoteServicer(db=ctx.db, outbox=ctx.outbox),
            )
        ],
        service_names=["hin.echo.v1.EchoService"],
        metadata=SampleBase.metadata,
        handlers=[HANDLER],
    )


@pytest_asyncio.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[RunningService]:
    state: Path = tmp_path_factory.mktemp("service")
    # A name of its own gives the service a consumer group of its own.
    name = f"sample{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings.from_env(
        name,
        environ={
            "HIN_STATE_DIR": str(state),
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "HIN_GRPC_ADDRESS": "127.0.0.1:0",
            "HIN_KAFKA_CONFIG": "session.timeout.ms=2000,heartbeat.interval.ms=500",
        },
    )
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    db = Database(f"sqlite:///{state / 'sample.db'}")
    host = ServiceHost(settings=settings, build=build, tracer_provider=provider, db=db)
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    assert host._bus is not None
    yield RunningService(
        host=host,
        stub=pb_grpc.EchoServiceStub(channel),
        db=db,
        outbox=host._bus.outbox,
        spans=spans,
    )
    await channel.close()
    await host.stop(grace=5)


async def eventually(condition: Callable[[], bool], description: str) -> None:
    for _ in range(1200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after 60 s waiting for {description}")


def outbox_count(db: Database) -> int:
    with db.transaction() as session:
        query = select(func.count()).select_from(outbox_table)
        return int(session.connection().scalar(query) or 0)


def spans_of(
    service: RunningService, kind: SpanKind, event_id: str
) -> list[ReadableSpan]:
    return [
        span
        for span in service.spans.get_finished_spans()
        if span.kind == kind
        and (span.attributes or {}).get("messaging.message.id") == event_id
    ]


async def test_patient_updates_keep_commit_order(service: RunningService) -> None:
    suffix = uuid.uuid4().hex[:8]
    patient, others = f"a-{suffix}", [f"b-{suffix}", f"c-{suffix}"]

    # Five updates of one patient, each its own commit, with two other
    # patients' updates committed between them.
    for version in range(1, 6):
        await service.db.run(write_update, service.outbox, patient, version)
        for other in others:
            await service.db.run(write_update, service.outbox, other, version)

    await eventually(
        lambda: len(effects(service.db, patient_id=patient)) == 5, "five updates"
    )
    applied = effects(service.db, patient_id=patient)
    assert [row.version for row in applied] == [1, 2, 3, 4, 5]
    assert len({row.partition for row in applied}) == 1
    assert [row.offset for row in applied] == sorted(row.offset for row in applied)
    for other in others:
        await eventually(
            lambda other=other: len(effects(service.db, patient_id=other)) == 5,
            f"updates of {other}",
        )
        versions = [row.version for row in effects(service.db, patient_id=other)]
        assert versions == [1, 2, 3, 4, 5]


async def test_consumer_span_joins_request_trace(service: RunningService) -> None:
    patient = f"t-{uuid.uuid4().hex[:8]}"
    response = await service.stub.Echo(pb.EchoRequest(message=patient, delay_ms=1))
    event_id = response.message
    await eventually(
        lambda: bool(spans_of(service, SpanKind.CONSUMER, event_id)), "consumer span"
    )

    server = [
        span
        for span in service.spans.get_finished_spans()
        if span.kind == SpanKind.SERVER and span.name == "hin.echo.v1.EchoService/Echo"
    ][-1]
    # A redelivery under load adds spans of the same shape, so every producer
    # and consumer span of the event is checked.
    producers = spans_of(service, SpanKind.PRODUCER, event_id)
    consumers = spans_of(service, SpanKind.CONSUMER, event_id)
    assert server.context is not None
    assert len(producers) >= 1
    producer_ids = set()
    for producer in producers:
        assert producer.context is not None
        assert producer.context.trace_id == server.context.trace_id
        assert producer.parent is not None
        assert producer.parent.span_id == server.context.span_id
        producer_ids.add(producer.context.span_id)
    for consumer in consumers:
        assert consumer.context is not None
        assert consumer.context.trace_id == server.context.trace_id
        assert consumer.parent is not None
        assert consumer.parent.span_id in producer_ids
        assert consumer.attributes is not None
        destination = consumer.attributes["messaging.destination.name"]
        assert destination == "hin.records.events.v1"

    # The event itself names the trace too.
    with service.db.transaction() as session:
        payload = session.connection().scalar(
            select(outbox_table.c.payload).where(outbox_table.c.event_id == event_id)
        )
    stored = events_pb2.PatientRecordUpdated.FromString(payload)
    assert stored.context.trace_id == format(server.context.trace_id, "032x")


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (pb.EchoRequest(message=""), "message"),
        (pb.EchoRequest(message="p-1", delay_ms=-1), "delay_ms"),
    ],
    ids=["missing-message", "negative-delay"],
)
async def test_invalid_request_writes_nothing(
    service: RunningService, request_message: pb.EchoRequest, field: str
) -> None:
    notes_before = count_notes(service.db)
    outbox_before = outbox_count(service.db)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Echo(request_message)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_requests = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            bad_requests.append(bad_request)
    assert len(bad_requests) == 1
    assert [v.field for v in bad_requests[0].field_violations] == [field]
    assert count_notes(service.db) == notes_before
    assert outbox_count(service.db) == outbox_before
