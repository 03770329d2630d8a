"""One authz service per test package, a settable clock, and seeding helpers.

State is seeded by running the service's own event handlers on events built
here, in a transaction of the service's database: the same code path as the
consumer, without waiting for the broker. tests/authz/test_events.py covers
the path through Kafka.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from opentelemetry.sdk.trace import TracerProvider

from hin.appointments.v1 import events_pb2 as appointments
from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import authz_service_pb2_grpc as pb_grpc
from hin.authz.v1 import events_pb2 as events
from hin.labs.v1 import events_pb2 as labs
from hin.records.v1 import events_pb2 as records
from mesh.network.devkeys import mint_token
from mesh.runtime.events import Envelope
from mesh.runtime.server import BuildContext, ServiceHost, ServiceSpec
from mesh.runtime.settings import ServiceSettings
from svc_authz import store
from svc_authz.app import make_build
from svc_authz.handlers import AuthzHandlers

#: Time the tests start at; the clock only moves when a test moves it.
START = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)

#: What the calling service's Envoy sidecar adds: the peer's SPIFFE id.
SIDECAR_METADATA = (
    (
        "x-forwarded-client-cert",
        "By=spiffe://hin.local/svc/authz;Hash=00;URI=spiffe://hin.local/svc/records",
    ),
)


class SettableClock:
    """Clock that returns a fixed time until a test moves it."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, delta: datetime.timedelta) -> None:
        self.now += delta


@dataclass
class Person:
    """A person the tests act as, with the claims of their token."""

    subject: str
    roles: tuple[str, ...]
    organization_id: str
    practitioner_id: str = ""
    patient_id: str = ""

    def subject_message(self) -> pb.Subject:
        return pb.Subject(
            subject=self.subject,
            kind=pb.SUBJECT_KIND_PERSON,
            roles=list(self.roles),
            organization_id=self.organization_id,
            practitioner_id=self.practitioner_id,
            patient_id=self.patient_id,
        )


@dataclass
class AuthzHarness:
    """A running authz service and the ways tests reach it."""

    host: ServiceHost
    port: int
    channel: grpc.aio.Channel
    stub: pb_grpc.AuthzServiceStub
    state: Path
    clock: SettableClock
    handlers: AuthzHandlers
    _offset: list[int] = field(default_factory=lambda: [0])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token(self, person: Person, **overrides: Any) -> str:
        return mint_token(
            self.state,
            subject=person.subject,
            roles=person.roles,
            organization_id=person.organization_id,
            practitioner_id=person.practitioner_id,
            patient_id=person.patient_id,
            **overrides,
        )

    def bearer(self, person: Person) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(person)}"),)

    def apply(self, fn: Callable[..., None], event: Message) -> None:
        """Run one handler on ``event`` in a transaction of the authz database."""
        self._offset[0] += 1
        envelope = Envelope(
            id=f"test-{self._offset[0]}",
            source="hin://tests",
            type=event.DESCRIPTOR.full_name,
            time=self.clock(),
            subject="",
            topic="test",
            partition=0,
            offset=self._offset[0],
            key="",
        )
        with self.host.db.transaction() as session:
            fn(session, event, envelope)

    def register(self, patient_id: str, organization_id: str) -> None:
        event = records.PatientRegistered(
            patient=records.PatientSnapshot(
                patient_id=patient_id,
                managing_organization_id=organization_id,
                version=1,
            )
        )
        self.apply(self.handlers.on_patient_registered, event)

    def book(
        self,
        appointment_id: str,
        patient_id: str,
        practitioner_id: str,
        organization_id: str,
    ) -> appointments.AppointmentSnapshot:
        snapshot = appointments.AppointmentSnapshot(
            appointment_id=appointment_id,
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            organization_id=organization_id,
        )
        self.apply(
            self.handlers.on_appointment_booked,
            appointments.AppointmentBooked(appointment=snapshot),
        )
        return snapshot

    def admit(
        self,
        admission_id: str,
        patient_id: str,
        organization_id: str,
        team: Iterable[str],
    ) -> None:
        members = list(team)
        event = appointments.PatientAdmitted(
            admission_id=admission_id,
            patient_id=patient_id,
            organization_id=organization_id,
            attending_practitioner_id=members[0],
            care_team_practitioner_ids=members[1:],
        )
        event.admitted_at.FromDatetime(self.clock())
        self.apply(self.handlers.on_patient_admitted, event)

    def place_lab_order(
        self, order_id: str, patient_id: str, practitioner_id: str, organization_id: str
    ) -> None:
        event = labs.LabOrderPlaced(
            order_id=order_id,
            patient_id=patient_id,
            ordering_practitioner_id=practitioner_id,
            organization_id=organization_id,
        )
        event.placed_at.FromDatetime(self.clock())
        self.apply(self.handlers.on_lab_order_placed, event)

    def add_consent(
        self,
        patient_id: str,
        grantee_organization_id: str,
        purposes: Iterable[int] = (),
        *,
        expires_at: datetime.datetime | None = None,
        revoked: bool = False,
    ) -> str:
        consent_id = store.new_id()
        with self.host.db.transaction() as session:
            session.add(
                store.ConsentRow(
                    consent_id=consent_id,
                    patient_id=patient_id,
                    grantee_organization_id=grantee_organization_id,
                    purposes=store.format_purposes(list(purposes)),
                    granted_by="tests",
                    granted_at=self.clock(),
                    expires_at=expires_at,
                    revoked_at=self.clock() if revoked else None,
                )
            )
        return consent_id

    def audit_rows(self, **where: Any) -> list[store.AuditRecordRow]:
        from sqlmodel import col, select

        with self.host.db.transaction() as session:
            query = select(store.AuditRecordRow)
            for name, value in where.items():
                query = query.where(getattr(store.AuditRecordRow, name) == value)
            return list(
                session.exec(query.order_by(col(store.AuditRecordRow.sequence))).all()
            )

    async def check(
        self,
        person: Person | pb.Subject,
        action: str,
        patient_id: str = "",
        purpose: int = events.PURPOSE_TREATMENT,
        **fields: Any,
    ) -> pb.CheckResponse:
        subject = person.subject_message() if isinstance(person, Person) else person
        return await self.stub.Check(
            pb.CheckRequest(
                subject=subject,
                action=action,
                patient_id=patient_id,
                purpose=purpose,
                **fields,
            ),
            metadata=SIDECAR_METADATA,
        )


def authz_settings(state: Path, bootstrap: str, **extra: str) -> ServiceSettings:
    environ = {
        "HIN_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        "HIN_DATABASE_URL": f"sqlite:///{state / 'authz.db'}",
        **extra,
    }
    return ServiceSettings.from_env("authz", environ=environ)


async def start_authz(
    state: Path,
    bootstrap: str,
    *,
    database_url: str = "",
    consume: bool = True,
    environ: Mapping[str, str] | None = None,
) -> AuthzHarness:
    """Start an authz service in ``state``; on SQLite unless a URL is given.

    With ``consume`` false the service has no event handlers, so it stays out
    of the ``hin.authz`` consumer group that the shared service is in.
    """
    # The JWKS must exist before the host loads it.
    mint_token(state, subject="setup", roles=["doctor"], organization_id="h")
    clock = SettableClock(START)
    build = make_build(clock)

    def build_without_consumer(ctx: BuildContext) -> ServiceSpec:
        return dataclasses.replace(build(ctx), handlers=())

    extra = dict(environ or {})
    if database_url:
        extra["HIN_DATABASE_URL"] = database_url
    host = ServiceHost(
        settings=authz_settings(state, bootstrap, **extra),
        build=build if consume else build_without_consumer,
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return AuthzHarness(
        host=host,
        port=port,
        channel=channel,
        stub=pb_grpc.AuthzServiceStub(channel),
        state=state,
        clock=clock,
        handlers=AuthzHandlers(clock=clock),
    )


async def stop_authz(harness: AuthzHarness) -> None:
    await harness.channel.close()
    await harness.host.stop(grace=1)


@pytest.fixture(scope="package")
async def authz(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[AuthzHarness]:
    """A running authz service on SQLite, shared by the package's tests.

    Tests share its database, so each one uses patient ids of its own.
    """
    harness = await start_authz(tmp_path_factory.mktemp("authz-state"), kafka_bootstrap)
    yield harness
    await stop_authz(harness)


def find_event(
    bootstrap: str,
    event_type: type[Message],
    matches: Callable[[Any], bool],
    *,
    timeout: float = 30.0,
) -> Any:
    """Read the event type's topic from the start; return the first match.

    Partitions are assigned directly, so no consumer group has to form.
    Raises AssertionError when no matching record arrives within ``timeout``.
    """
    import time

    from confluent_kafka import Consumer, TopicPartition

    from mesh.runtime.events import topic_for_event

    topic = topic_for_event(event_type)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tests-{store.new_id()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign(
            [TopicPartition(topic, p, 0) for p in partitions]  # offset 0: oldest
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is None or record.error():
                continue
            headers = dict(record.headers() or [])
            if headers.get("ce_type") != event_type.DESCRIPTOR.full_name.encode():
                continue
            event = event_type.FromString(record.value())
            if matches(event):
                return event
    finally:
        consumer.close()
    raise AssertionError(f"no matching {event_type.DESCRIPTOR.full_name} on {topic}")
