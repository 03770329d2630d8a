"""Authorization checks the servicer requests, and how it applies the decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hin.appointments.v1 import appointments_service_pb2 as pb
from mesh.runtime.authz import Decision
from mesh.runtime.principal import Principal

from .conftest import (
    Running,
    cairo,
    new_practitioner,
    next_weekday,
    period,
    running_service,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

READ = "appointments.schedule.read"


@dataclass
class RecordingAuthorizer:
    """Allow everything but the ``denied`` patients, redact reads, record checks."""

    checks: list[tuple[str, str]] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = 0,
        organization_id: str = "",
    ) -> Decision:
        self.checks.append((action, patient_id))
        if patient_id in self.denied:
            return Decision(False, "no care relationship with the patient")
        return Decision(True, "test", redact_clinical=action == READ)


@pytest.fixture(scope="module")
def authorizer() -> RecordingAuthorizer:
    return RecordingAuthorizer()


@pytest.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    authorizer: RecordingAuthorizer,
) -> AsyncIterator[Running]:
    state: Path = tmp_path_factory.mktemp("appointments-access")
    url = f"sqlite:///{state / 'appointments.db'}"
    async with running_service(state, kafka_bootstrap, url, authorizer) as running:
        yield running


async def test_reads_redact_reason_and_name_patient(
    service: Running, authorizer: RecordingAuthorizer
) -> None:
    practitioner_id = await new_practitioner(service, "4000000001")
    service.register_patients("patient-access-1")
    monday = next_weekday(1)
    booked = await service.stub.Book(
        pb.BookRequest(
            patient_id="patient-access-1",
            practitioner_id=practitioner_id,
            period=period(cairo(monday, 9, 0), cairo(monday, 9, 15)),
            reason="chest pain",
        ),
        metadata=service.scheduler_auth,
    )
    authorizer.checks.clear()

    fetched = await service.stub.GetAppointment(
        pb.GetAppointmentRequest(appointment_id=booked.appointment.appointment_id),
        metadata=service.scheduler_auth,
    )
    await service.stub.CheckIn(
        pb.CheckInRequest(
            appointment_id=booked.appointment.appointment_id, expected_version=1
        ),
        metadata=service.scheduler_auth,
    )

    assert booked.appointment.reason == "chest pain"
    assert fetched.appointment.reason == ""
    assert authorizer.checks == [
        (READ, "patient-access-1"),
        ("appointments.schedule.write", "patient-access-1"),
    ]


async def test_staff_administration_needs_admin_write(
    service: Running, authorizer: RecordingAuthorizer
) -> None:
    authorizer.checks.clear()

    await new_practitioner(service, "4000000002")

    # RegisterPractitioner, then SetWeeklySchedule; neither names a patient.
    assert authorizer.checks == [
        ("appointments.admin.write", ""),
        ("appointments.admin.write", ""),
    ]


async def test_practitioner_list_drops_denied_patients(
    service: Running, authorizer: RecordingAuthorizer
) -> None:
    practitioner_id = await new_practitioner(service, "4000000003")
    service.register_patients("patient-access-2", "patient-access-3")
    monday = next_weekday(1)
    for minute, patient_id in ((0, "patient-access-2"), (15, "patient-access-3")):
        await service.stub.Book(
            pb.BookRequest(
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                period=period(
                    cairo(monday, 10, minute), cairo(monday, 10, minute + 15)
                ),
                reason="follow-up",
            ),
            metadata=service.scheduler_auth,
        )
    authorizer.denied.add("patient-access-3")
    authorizer.checks.clear()

    listed = await service.stub.ListAppointments(
        pb.ListAppointmentsRequest(practitioner_id=practitioner_id),
        metadata=service.scheduler_auth,
    )

    assert [a.patient_id for a in listed.appointments] == ["patient-access-2"]
    assert listed.appointments[0].reason == ""
    assert (READ, "patient-access-2") in authorizer.checks
    assert (READ, "patient-access-3") in authorizer.checks
