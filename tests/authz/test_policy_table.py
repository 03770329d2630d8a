"""Access decisions through AuthzService.Check, one row per hand-written case.

The world has two hospitals, hosp-a and hosp-b. Each row's expected decision
was worked out by hand from the rules in svc_authz/domain/policy.py:

- a role must permit the action;
- clinicians need an open care relationship;
- front-office staff reach their own hospital's patients;
- data held by another hospital needs a consent for the caller's hospital
  and purpose, and research needs a consent that names research;
- reads by roles without clinical read permission are redacted.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from hin.appointments.v1 import events_pb2 as appointments
from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import events_pb2 as events
from tests.authz.conftest import AuthzHarness, Person, start_authz, stop_authz

DAY = datetime.timedelta(days=1)
T = events.PURPOSE_TREATMENT
PAY = events.PURPOSE_PAYMENT
RES = events.PURPOSE_RESEARCH

DR_A1 = Person("t-dr-a1", ("doctor",), "hosp-a", practitioner_id="t-pr-a1")
DR_A2 = Person("t-dr-a2", ("doctor",), "hosp-a", practitioner_id="t-pr-a2")
NURSE = Person("t-nurse-n1", ("nurse",), "hosp-a", practitioner_id="t-pr-n1")
LAB_A = Person("t-lab-a", ("lab_technician",), "hosp-a")
LAB_B = Person("t-lab-b", ("lab_technician",), "hosp-b")
REC_A = Person("t-rec-a", ("receptionist",), "hosp-a")
REC_B = Person("t-rec-b", ("receptionist",), "hosp-b")
BILL_A = Person("t-bill-a", ("billing_clerk",), "hosp-a")
PAT_1 = Person("t-pat-1", ("patient",), "hosp-a", patient_id="t-pa1")
PRIV_A = Person("t-priv-a", ("privacy_officer",), "hosp-a")
ADMIN_A = Person("t-admin-a", ("administrator",), "hosp-a")
SERVICE = pb.Subject(
    subject="spiffe://hin.local/svc/billing",
    kind=pb.SUBJECT_KIND_SERVICE,
    roles=["service"],
    service_name="billing",
)
ANONYMOUS = pb.Subject(subject="anonymous", kind=pb.SUBJECT_KIND_ANONYMOUS)


@dataclass(frozen=True)
class Case:
    caller: Person | pb.Subject
    action: str
    patient_id: str
    purpose: int
    allowed: bool
    reason_code: str
    redact_clinical: bool = False


CASES = [
    # Clinicians inside and outside care relationships, one hospital.
    Case(DR_A1, "records.clinical.read", "t-pa1", T, True, "ROLE_PERMITTED"),
    Case(DR_A1, "records.clinical.write", "t-pa1", T, True, "ROLE_PERMITTED"),
    Case(DR_A1, "records.demographics.read", "t-pa1", T, True, "ROLE_PERMITTED"),
    Case(DR_A2, "records.clinical.read", "t-pa1", T, False, "NO_CARE_RELATIONSHIP"),
    Case(DR_A1, "records.clinical.read", "t-pa2", T, False, "NO_CARE_RELATIONSHIP"),
    # Cancelled appointment: closed at once.
    Case(DR_A1, "records.clinical.read", "t-pa3", T, False, "NO_CARE_RELATIONSHIP"),
    # Completed 10 days ago: inside the 30-day retention.
    Case(DR_A1, "records.clinical.read", "t-pa4", T, True, "ROLE_PERMITTED"),
    # Completed 40 days ago: past the retention.
    Case(DR_A1, "records.clinical.read", "t-pa5", T, False, "NO_CARE_RELATIONSHIP"),
    Case(NURSE, "records.clinical.read", "t-pa6", T, True, "ROLE_PERMITTED"),
    Case(NURSE, "labs.clinical.write", "t-pa6", T, True, "ROLE_PERMITTED"),
    Case(NURSE, "records.demographics.write", "t-pa6", T, False, "ROLE_NOT_PERMITTED"),
    # Discharged 40 days ago.
    Case(NURSE, "records.clinical.read", "t-pa7", T, False, "NO_CARE_RELATIONSHIP"),
    Case(NURSE, "records.clinical.read", "t-pa1", T, False, "NO_CARE_RELATIONSHIP"),
    # Lab order at hosp-a links hosp-a's lab, not hosp-b's.
    Case(LAB_A, "labs.clinical.write", "t-pa8", T, True, "ROLE_PERMITTED"),
    Case(LAB_B, "labs.clinical.write", "t-pa8", T, False, "NO_CARE_RELATIONSHIP"),
    Case(LAB_A, "billing.billing.read", "t-pa8", T, False, "ROLE_NOT_PERMITTED"),
    # Front office.
    Case(REC_A, "records.demographics.write", "t-pa2", T, True, "ROLE_PERMITTED"),
    Case(REC_A, "records.demographics.read", "t-pa2", T, True, "ROLE_PERMITTED", True),
    Case(REC_A, "records.clinical.read", "t-pa2", T, False, "ROLE_NOT_PERMITTED"),
    Case(REC_B, "records.demographics.read", "t-pa2", T, False, "CONSENT_REQUIRED"),
    Case(REC_A, "appointments.schedule.write", "t-pa1", T, True, "ROLE_PERMITTED"),
    Case(REC_B, "records.demographics.read", "t-pb1", T, True, "ROLE_PERMITTED", True),
    # Billing staff: demographics redacted, billing, never clinical.
    Case(
        BILL_A, "records.demographics.read", "t-pa2", PAY, True, "ROLE_PERMITTED", True
    ),
    Case(BILL_A, "billing.billing.write", "t-pa2", PAY, True, "ROLE_PERMITTED"),
    Case(BILL_A, "records.clinical.read", "t-pa2", PAY, False, "ROLE_NOT_PERMITTED"),
    # Patients: their own record only.
    Case(PAT_1, "records.clinical.read", "t-pa1", T, True, "OWN_RECORD"),
    Case(PAT_1, "records.clinical.read", "t-pa2", T, False, "NOT_OWN_RECORD"),
    Case(PAT_1, "records.demographics.read", "t-pa2", T, False, "NOT_OWN_RECORD"),
    Case(PAT_1, "records.clinical.write", "t-pa1", T, False, "ROLE_NOT_PERMITTED"),
    Case(PAT_1, "authz.audit.read", "t-pa1", T, True, "OWN_RECORD"),
    Case(PAT_1, "records.demographics.read", "", T, False, "PATIENT_REQUIRED"),
    # Finding free slots names no patient and reads no patient data.
    Case(PAT_1, "appointments.schedule.read", "", T, True, "ROLE_PERMITTED"),
    Case(PAT_1, "appointments.schedule.write", "", T, False, "PATIENT_REQUIRED"),
    Case(PAT_1, "appointments.schedule.write", "t-pa1", T, True, "OWN_RECORD"),
    # Privacy officer and administrator.
    Case(PRIV_A, "authz.audit.read", "t-pa2", T, True, "ROLE_PERMITTED", True),
    Case(PRIV_A, "records.clinical.read", "t-pa2", T, False, "ROLE_NOT_PERMITTED"),
    # The privacy officer is told of break-the-glass accesses at their hospital.
    Case(PRIV_A, "notify.notification.read", "t-pa2", T, True, "ROLE_PERMITTED", True),
    Case(PRIV_A, "notify.notification.read", "t-pb1", T, False, "CONSENT_REQUIRED"),
    # Clinicians manage their own notification preferences.
    Case(DR_A1, "notify.notification.write", "", T, True, "ROLE_PERMITTED"),
    Case(ADMIN_A, "authz.admin.write", "", T, True, "ROLE_PERMITTED"),
    Case(ADMIN_A, "records.demographics.read", "t-pa2", T, False, "ROLE_NOT_PERMITTED"),
    Case(ADMIN_A, "authz.audit.read", "t-pa2", T, False, "NOT_PATIENT_SCOPED"),
    # Services and unauthenticated callers.
    Case(SERVICE, "records.clinical.read", "t-pa2", T, True, "SERVICE_IDENTITY"),
    Case(ANONYMOUS, "records.demographics.read", "t-pa2", T, False, "UNAUTHENTICATED"),
    # Data held by hosp-b, caller at hosp-a with a care relationship.
    Case(DR_A1, "records.clinical.read", "t-pb1", T, False, "CONSENT_REQUIRED"),
    Case(DR_A1, "records.clinical.read", "t-pb2", T, True, "ROLE_PERMITTED"),
    # Consent expired yesterday.
    Case(DR_A1, "records.clinical.read", "t-pb3", T, False, "CONSENT_REQUIRED"),
    # Consent for payment only.
    Case(DR_A1, "records.clinical.read", "t-pb4", T, False, "CONSENT_REQUIRED"),
    Case(BILL_A, "billing.billing.read", "t-pb4", PAY, True, "ROLE_PERMITTED", True),
    Case(BILL_A, "billing.billing.read", "t-pb4", T, False, "CONSENT_REQUIRED"),
    # Revoked consent.
    Case(DR_A1, "records.clinical.read", "t-pb5", T, False, "CONSENT_REQUIRED"),
    # Consent for any organization and every purpose but research.
    Case(DR_A1, "records.clinical.read", "t-pb6", T, True, "ROLE_PERMITTED"),
    Case(DR_A1, "records.clinical.read", "t-pb6", RES, False, "CONSENT_REQUIRED"),
    # Research inside the same hospital.
    Case(
        DR_A1, "records.clinical.read", "t-pa1", RES, False, "RESEARCH_CONSENT_REQUIRED"
    ),
    Case(DR_A1, "records.clinical.read", "t-pa9", RES, True, "ROLE_PERMITTED"),
    # Patient authz has never heard of.
    Case(DR_A1, "records.clinical.read", "t-unknown", T, False, "PATIENT_UNKNOWN"),
    # Registering a new patient names no patient yet.
    Case(REC_A, "records.demographics.write", "", T, True, "ROLE_PERMITTED"),
]


@pytest.fixture(scope="module")
async def authz_postgres(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    postgres_database: Callable[[], str],
) -> AsyncIterator[AuthzHarness]:
    """A second authz service, on a fresh PostgreSQL database."""
    harness = await start_authz(
        tmp_path_factory.mktemp("authz-postgres"),
        kafka_bootstrap,
        database_url=postgres_database(),
        consume=False,
    )
    yield harness
    await stop_authz(harness)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def world(request: pytest.FixtureRequest) -> AuthzHarness:
    """The table's patients, relationships and consents, on each database."""
    fixture = "authz" if request.param == "sqlite" else "authz_postgres"
    authz: AuthzHarness = request.getfixturevalue(fixture)
    now = authz.clock()
    for patient in (
        "t-pa1",
        "t-pa2",
        "t-pa3",
        "t-pa4",
        "t-pa5",
        "t-pa6",
        "t-pa7",
        "t-pa8",
        "t-pa9",
    ):
        authz.register(patient, "hosp-a")
    for patient in ("t-pb1", "t-pb2", "t-pb3", "t-pb4", "t-pb5", "t-pb6"):
        authz.register(patient, "hosp-b")
        authz.book(f"t-ap-{patient}", patient, "t-pr-a1", "hosp-a")

    authz.book("t-ap-1", "t-pa1", "t-pr-a1", "hosp-a")
    cancelled = authz.book("t-ap-3", "t-pa3", "t-pr-a1", "hosp-a")
    authz.apply(
        authz.handlers.on_appointment_ended,
        _cancelled(cancelled),
    )
    authz.apply(
        authz.handlers.on_appointment_completed,
        _completed(authz.book("t-ap-4", "t-pa4", "t-pr-a1", "hosp-a"), now - 10 * DAY),
    )
    authz.apply(
        authz.handlers.on_appointment_completed,
        _completed(authz.book("t-ap-5", "t-pa5", "t-pr-a1", "hosp-a"), now - 40 * DAY),
    )
    authz.admit("t-adm-6", "t-pa6", "hosp-a", ["t-pr-x", "t-pr-n1"])
    authz.admit("t-adm-7", "t-pa7", "hosp-a", ["t-pr-n1"])
    authz.apply(
        authz.handlers.on_patient_discharged, _discharged("t-adm-7", now - 40 * DAY)
    )
    authz.place_lab_order("t-ord-8", "t-pa8", "t-pr-a1", "hosp-a")
    authz.book("t-ap-9", "t-pa9", "t-pr-a1", "hosp-a")

    authz.add_consent("t-pb2", "hosp-a", [T])
    authz.add_consent("t-pb3", "hosp-a", [T], expires_at=now - DAY)
    authz.add_consent("t-pb4", "hosp-a", [PAY])
    authz.add_consent("t-pb5", "hosp-a", [T], revoked=True)
    authz.add_consent("t-pb6", "")
    authz.add_consent("t-pa9", "hosp-a", [RES])
    return authz


def _cancelled(
    snapshot: appointments.AppointmentSnapshot,
) -> appointments.AppointmentCancelled:
    return appointments.AppointmentCancelled(appointment=snapshot)


def _completed(
    snapshot: appointments.AppointmentSnapshot, when: datetime.datetime
) -> appointments.AppointmentCompleted:
    event = appointments.AppointmentCompleted(appointment=snapshot)
    event.completed_at.FromDatetime(when)
    return event


def _discharged(
    admission_id: str, when: datetime.datetime
) -> appointments.PatientDischarged:
    event = appointments.PatientDischarged(admission_id=admission_id)
    event.discharged_at.FromDatetime(when)
    return event


def _case_id(case: Case) -> str:
    caller = (
        case.caller.subject
        if isinstance(case.caller, Person)
        else (case.caller.subject.rsplit("/", 1)[-1])
    )
    return f"{caller}-{case.action}-{case.patient_id or 'none'}-{case.purpose}"


def test_table_has_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=_case_id)
async def test_check_decision(world: AuthzHarness, case: Case) -> None:
    response = await world.check(
        case.caller, case.action, case.patient_id, case.purpose
    )
    assert response.allowed is case.allowed
    assert response.reason_code == case.reason_code
    assert response.redact_clinical is case.redact_clinical
    assert response.emergency is False
    assert response.audit_id


async def test_concurrent_checks_keep_chain_linear(world: AuthzHarness) -> None:
    before = await world.stub.VerifyAuditChain(
        pb.VerifyAuditChainRequest(),
        metadata=world.bearer(ADMIN_A),
    )
    responses = await asyncio.gather(
        *(
            world.check(DR_A1, "records.clinical.read", f"t-pa{1 + index % 9}")
            for index in range(40)
        )
    )
    after = await world.stub.VerifyAuditChain(
        pb.VerifyAuditChainRequest(), metadata=world.bearer(ADMIN_A)
    )
    assert len({r.audit_id for r in responses}) == 40
    assert after.intact, after.problem
    # Each verification is audited too, after it ran: hence the one extra.
    assert after.records_checked == before.records_checked + 40 + 1
