"""Fixtures of the scheduling tests: a real service host and its stub."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import appointments_service_pb2_grpc as pb_grpc
from hin.common.v1 import types_pb2
from hin.records.v1 import events_pb2 as records_events
from mesh.network.devkeys import mint_token
from mesh.runtime.authz import Authorizer, RolePolicyAuthorizer
from mesh.runtime.server import ServiceHost
from mesh.runtime.settings import ServiceSettings
from svc_appointments.app import make_build
from svc_appointments.handlers import on_patient_registered, on_patients_merged

CAIRO = ZoneInfo("Africa/Cairo")
PERMISSIONS = {
    "scheduler": {
        "appointments.schedule.read",
        "appointments.schedule.write",
        "appointments.admin.write",
    },
    "receptionist": {"appointments.schedule.read"},
}


class SettableClock:
    """Clock of the service under test; real time unless a test sets it."""

    def __init__(self) -> None:
        self.fixed: datetime | None = None

    def __call__(self) -> datetime:
        return self.fixed or datetime.now(UTC)


@dataclass
class Running:
    """A started appointments service, its stub and callers' metadata."""

    host: ServiceHost
    stub: pb_grpc.AppointmentsServiceStub
    scheduler_auth: Sequence[tuple[str, str]]
    receptionist_auth: Sequence[tuple[str, str]]
    clock: SettableClock

    def register_patients(self, *patient_ids: str) -> None:
        """Apply PatientRegistered for each id through the service's handler."""
        with self.host.db.transaction() as session:
            for patient_id in patient_ids:
                event = records_events.PatientRegistered(
                    patient=records_events.PatientSnapshot(
                        patient_id=patient_id, version=1
                    )
                )
                on_patient_registered(session, event, None)  # type: ignore[arg-type]

    def merge_patients(self, merged_id: str, survivor_id: str) -> None:
        with self.host.db.transaction() as session:
            event = records_events.PatientsMerged(
                merged_patient_id=merged_id, surviving_patient_id=survivor_id
            )
            on_patients_merged(session, event, None)  # type: ignore[arg-type]


@asynccontextmanager
async def running_service(
    state: Path,
    bootstrap: str,
    database_url: str,
    authorizer: Authorizer | None = None,
) -> AsyncIterator[Running]:
    """Start the service on ``database_url`` and stop it on exit."""
    scheduler = mint_token(
        state, subject="user-scheduler", roles=["scheduler"], organization_id="org-1"
    )
    receptionist = mint_token(
        state, subject="user-desk", roles=["receptionist"], organization_id="org-1"
    )
    settings = ServiceSettings.from_env(
        "appointments",
        environ={
            "HIN_STATE_DIR": str(state),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HIN_GRPC_ADDRESS": "127.0.0.1:0",
            "HIN_DATABASE_URL": database_url,
            # A consumer group of its own per host: on the embedded broker a
            # group whose earlier members left before their first assignment
            # did not assign partitions to a new member within a minute.
            "HIN_KAFKA_CONFIG": (
                "session.timeout.ms=6000,fetch.wait.max.ms=50,"
                f"group.id=hin.appointments.test-{uuid.uuid4().hex[:8]}"
            ),
            "HIN_APPOINTMENTS_RELAY_POLL_SECONDS": "0.2",
        },
    )
    clock = SettableClock()
    host = ServiceHost(
        settings=settings,
        build=make_build(clock),
        authorizer=authorizer or RolePolicyAuthorizer(PERMISSIONS),
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            host=host,
            stub=pb_grpc.AppointmentsServiceStub(channel),
            scheduler_auth=[("authorization", f"Bearer {scheduler}")],
            receptionist_auth=[("authorization", f"Bearer {receptionist}")],
            clock=clock,
        )
    finally:
        await channel.close()
        # A consumer that leaves its group cleanly lets the next test host of
        # the same group get its partitions at once.
        await host.stop(grace=10)


@pytest.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[Running]:
    """One service on SQLite shared by a test module."""
    state = tmp_path_factory.mktemp("appointments")
    url = f"sqlite:///{state / 'appointments.db'}"
    async with running_service(state, kafka_bootstrap, url) as running:
        yield running


def next_weekday(weekday: int, weeks_ahead: int = 1) -> date:
    """Return the Cairo date of ISO ``weekday`` at least ``weeks_ahead`` weeks out."""
    today = datetime.now(CAIRO).date()
    days = (weekday - today.isoweekday()) % 7 + 7 * weeks_ahead
    return today + timedelta(days=days)


def cairo(day: date, hour: int, minute: int = 0) -> datetime:
    """Return the UTC instant of a Cairo wall-clock time."""
    return datetime(
        day.year, day.month, day.day, hour, minute, tzinfo=CAIRO
    ).astimezone(UTC)


def period(start: datetime, end: datetime) -> types_pb2.Period:
    message = types_pb2.Period()
    message.start.FromDatetime(start)
    message.end.FromDatetime(end)
    return message


async def new_practitioner(
    running: Running,
    npi: str,
    rules: Sequence[pb.WeeklyRule] | None = None,
    organization_id: str = "org-1",
) -> str:
    """Register a practitioner with a weekly schedule; return its id."""
    response = await running.stub.RegisterPractitioner(
        pb.RegisterPractitionerRequest(
            identifiers=[
                types_pb2.Identifier(system="http://hl7.org/fhir/sid/us-npi", value=npi)
            ],
            names=[types_pb2.HumanName(family="Test", given=["Practitioner"])],
            organization_id=organization_id,
        ),
        metadata=running.scheduler_auth,
    )
    practitioner_id = response.practitioner.practitioner_id
    await running.stub.SetWeeklySchedule(
        pb.SetWeeklyScheduleRequest(
            practitioner_id=practitioner_id,
            rules=rules
            or [
                pb.WeeklyRule(
                    weekday=day,
                    start_time="09:00",
                    end_time="13:00",
                    slot_minutes=15,
                )
                for day in (pb.WEEKDAY_MONDAY, pb.WEEKDAY_TUESDAY)
            ],
            expected_version=0,
        ),
        metadata=running.scheduler_auth,
    )
    return practitioner_id
