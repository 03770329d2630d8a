"""Fixtures of the labs tests: a real service host, its stub and an MLLP client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer, Producer
from google.protobuf.message import Message
from opentelemetry.sdk.trace import TracerProvider

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import labs_service_pb2_grpc as pb_grpc
from hin.records.v1 import events_pb2 as records_events
from mesh.network.devkeys import mint_token
from mesh.runtime.authz import RolePolicyAuthorizer
from mesh.runtime.events.envelope import cloudevents_headers
from mesh.runtime.server import BuildContext, ServiceHost, ServiceSpec
from mesh.runtime.settings import ServiceSettings
from svc_labs.app import LabsApp, create_app
from svc_labs.handlers import PatientHandlers

LABS_TOPIC = "hin.labs.events.v1"
RECORDS_TOPIC = "hin.records.events.v1"
START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: Upper bound on waiting for the broker; reaching it fails the test.
BROKER_DEADLINE = timedelta(seconds=60)

PERMISSIONS = {
    "clinician": {"labs.clinical.read", "labs.clinical.write"},
    "lab-clerk": {"labs.clinical.read", "labs.clinical.write"},
    "receptionist": set(),
    "administrator": {"labs.admin.write"},
}


@dataclass
class Running:
    """A started labs service, its stub, MLLP port and callers' metadata."""

    host: ServiceHost
    app: LabsApp
    stub: pb_grpc.LabsServiceStub
    mllp_port: int
    clinician_auth: Sequence[tuple[str, str]]
    receptionist_auth: Sequence[tuple[str, str]]
    admin_auth: Sequence[tuple[str, str]]
    state: Path

    def register_patient(
        self, patient_id: str, identifiers: Iterable[types.Identifier], version: int = 1
    ) -> None:
        """Apply PatientRegistered through the service's handler."""
        event = records_events.PatientRegistered(
            patient=records_events.PatientSnapshot(
                patient_id=patient_id, identifiers=list(identifiers), version=version
            )
        )
        handlers = PatientHandlers(outbox=self.host._bus.outbox)
        with self.host.db.transaction() as session:
            handlers.on_registered(session, event, _envelope(event))

    def merge_patients(self, merged_id: str, survivor_id: str) -> None:
        event = records_events.PatientsMerged(
            merged_patient_id=merged_id, surviving_patient_id=survivor_id
        )
        handlers = PatientHandlers(outbox=self.host._bus.outbox)
        with self.host.db.transaction() as session:
            handlers.on_merged(session, event, _envelope(event))


def _envelope(event: Message) -> object:
    from mesh.runtime.events import Envelope

    return Envelope(
        id=str(uuid.uuid4()),
        source="hin://records",
        type=event.DESCRIPTOR.full_name,
        time=datetime.now(UTC),
        subject="",
        topic=RECORDS_TOPIC,
        partition=0,
        offset=0,
        key="",
    )


@asynccontextmanager
async def running_labs(
    state: Path, bootstrap: str, database_url: str, extra: dict[str, str] | None = None
) -> AsyncIterator[Running]:
    """Start svc_labs with its MLLP listener on a free port; stop it on exit."""
    clinician = mint_token(
        state,
        subject="user-clinician",
        roles=["clinician"],
        organization_id="org-1",
        practitioner_id="prac-1",
    )
    receptionist = mint_token(
        state, subject="user-desk", roles=["receptionist"], organization_id="org-1"
    )
    administrator = mint_token(
        state, subject="user-admin", roles=["administrator"], organization_id="org-1"
    )
    environ = {
        "HIN_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        "HIN_DATABASE_URL": database_url,
        # A group per host: a consumer of an earlier module that has not
        # left the group yet must not take this host's records.
        "HIN_KAFKA_CONFIG": "session.timeout.ms=6000,fetch.wait.max.ms=50,"
        f"group.id=hin.labs.test-{uuid.uuid4().hex[:12]}",
        "HIN_LABS_MLLP_ADDRESS": "127.0.0.1:0",
        "HIN_LABS_FACILITY_ZONES": "LAB_NY=America/New_York",
        "HIN_LABS_IDENTIFIER_SYSTEMS": "CAIRO_GH=urn:hin:id:mrn:org-1",
        **(extra or {}),
    }
    settings = ServiceSettings.from_env("labs", environ=environ)
    apps: list[LabsApp] = []

    def build(ctx: BuildContext) -> ServiceSpec:
        app = create_app(ctx)
        apps.append(app)
        return app.spec

    host = ServiceHost(
        settings=settings,
        build=build,
        authorizer=RolePolicyAuthorizer(PERMISSIONS),
        tracer_provider=TracerProvider(),
    )
    await host.start()
    listener = apps[0].listener
    assert listener is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield Running(
            host=host,
            app=apps[0],
            stub=pb_grpc.LabsServiceStub(channel),
            mllp_port=listener.port,
            clinician_auth=[("authorization", f"Bearer {clinician}")],
            receptionist_auth=[("authorization", f"Bearer {receptionist}")],
            admin_auth=[("authorization", f"Bearer {administrator}")],
            state=state,
        )
    finally:
        await channel.close()
        await host.stop(grace=1)


@pytest.fixture(scope="module")
async def labs(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[Running]:
    """One labs service on SQLite shared by a test module."""
    state = tmp_path_factory.mktemp("labs")
    url = f"sqlite:///{state / 'labs.db'}"
    async with running_labs(state, kafka_bootstrap, url) as running:
        yield running


class MllpClient:
    """Minimal MLLP sender: one connection, one ACK read per message sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, port: int) -> MllpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, message: bytes) -> bytes:
        """Send one framed message and return the ACK's content."""
        self._writer.write(START_BLOCK + message + END_BLOCK)
        await self._writer.drain()
        return await self.read_ack()

    async def read_ack(self) -> bytes:
        frame = await asyncio.wait_for(self._reader.readuntil(END_BLOCK), 30)
        assert frame.startswith(START_BLOCK), frame[:20]
        return frame[1 : -len(END_BLOCK)]

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass


def ack_fields(ack: bytes) -> dict[str, list[str]]:
    """Split an ACK (standard delimiters) into its segments' fields by id."""
    segments: dict[str, list[str]] = {}
    for line in ack.decode("latin-1").split("\r"):
        if line:
            segments[line[:3]] = line.split("|")
    return segments


def publish_records_event(bootstrap: str, event: Message, key: str) -> None:
    """Publish a records event as svc_records would, with CloudEvents headers."""
    event_id = str(uuid.uuid4())
    event.context.event_id = event_id  # type: ignore[attr-defined]
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        RECORDS_TOPIC,
        key=key.encode(),
        value=event.SerializeToString(),
        headers=cloudevents_headers(
            event_id=event_id,
            source="hin://records",
            event_type=event.DESCRIPTOR.full_name,
            time=datetime.now(UTC),
            subject=key,
            traceparent="",
            tracestate="",
        ),
    )
    assert producer.flush(30) == 0


class TopicReader:
    """Consumer of the labs topic from its beginning, for event assertions."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"labs-test-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "fetch.wait.max.ms": 50,
            }
        )
        self._consumer.subscribe([LABS_TOPIC])
        self.records: list[tuple[str, bytes, str]] = []

    async def wait_for(
        self, predicate: object, *, deadline: timedelta = BROKER_DEADLINE
    ) -> tuple[str, bytes, str]:
        """Poll until a record (type, value, key) satisfies ``predicate``."""
        check = predicate  # callable taking (type, value, key)
        for record in self.records:
            if check(*record):  # type: ignore[operator]
                return record
        end = datetime.now(UTC) + deadline
        while datetime.now(UTC) < end:
            message = await asyncio.to_thread(self._consumer.poll, 0.5)
            if message is None or message.error():
                continue
            headers = {k: (v or b"").decode() for k, v in message.headers() or []}
            record = (
                headers.get("ce_type", ""),
                message.value() or b"",
                (message.key() or b"").decode(),
            )
            self.records.append(record)
            if check(*record):  # type: ignore[operator]
                return record
        raise AssertionError("no matching event arrived on the labs topic")

    def close(self) -> None:
        self._consumer.close()
