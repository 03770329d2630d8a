"""Break the glass: mandatory reason, flagged access in the window, none after."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import events_pb2 as events
from tests.authz.conftest import AuthzHarness, Person, find_event

DOCTOR = Person("g-dr", ("doctor",), "hosp-a", practitioner_id="g-pr")
RECEPTIONIST = Person("g-rec", ("receptionist",), "hosp-a")
REASON = "unconscious in the emergency room, no history available"


@pytest.fixture(scope="module")
def patient(authz: AuthzHarness) -> str:
    authz.register("g-p1", "hosp-a")
    authz.register("g-p2", "hosp-b")
    return "g-p1"


def _violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    return [violation.field for violation in bad_request.field_violations]


async def test_empty_reason_is_rejected(authz: AuthzHarness, patient: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await authz.stub.BreakGlass(
            pb.BreakGlassRequest(patient_id=patient, reason="   "),
            metadata=authz.bearer(DOCTOR),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violated_fields(caught.value) == ["reason"]


async def test_long_reason_is_rejected(authz: AuthzHarness, patient: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await authz.stub.BreakGlass(
            pb.BreakGlassRequest(patient_id=patient, reason="r" * (1 << 20)),
            metadata=authz.bearer(DOCTOR),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violated_fields(caught.value) == ["reason"]


async def test_window_over_maximum_rejected(authz: AuthzHarness, patient: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await authz.stub.BreakGlass(
            pb.BreakGlassRequest(
                patient_id=patient, reason=REASON, duration_minutes=241
            ),
            metadata=authz.bearer(DOCTOR),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violated_fields(caught.value) == ["duration_minutes"]


async def test_receptionist_cannot_break_glass(
    authz: AuthzHarness, patient: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await authz.stub.BreakGlass(
            pb.BreakGlassRequest(patient_id=patient, reason=REASON),
            metadata=authz.bearer(RECEPTIONIST),
        )
    rows = authz.audit_rows(subject="g-rec", action="authz.break_glass.write")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [row.decision for row in rows] == ["DENY"]


async def test_access_inside_window_only(authz: AuthzHarness, patient: str) -> None:
    started = authz.clock()
    before = await authz.check(DOCTOR, "records.clinical.read", patient)

    response = await authz.stub.BreakGlass(
        pb.BreakGlassRequest(patient_id=patient, reason=REASON, duration_minutes=30),
        metadata=authz.bearer(DOCTOR),
    )
    grant = response.grant
    inside = await authz.check(DOCTOR, "records.clinical.read", patient)
    # The grant covers only the patient it names.
    other = await authz.check(DOCTOR, "records.clinical.read", "g-p2")
    inside_rows = authz.audit_rows(audit_id=inside.audit_id)

    authz.clock.advance(datetime.timedelta(minutes=31))
    try:
        after = await authz.check(DOCTOR, "records.clinical.read", patient)
    finally:
        authz.clock.now = started

    assert before.allowed is False
    assert grant.expires_at.ToDatetime(datetime.UTC) == started + datetime.timedelta(
        minutes=30
    )
    assert inside.allowed is True
    assert inside.emergency is True
    assert inside.reason_code == "BREAK_GLASS"
    assert other.allowed is False
    assert inside_rows[0].emergency is True
    assert after.allowed is False
    assert after.reason_code == "NO_CARE_RELATIONSHIP"


async def test_grant_event_reaches_topic(
    authz: AuthzHarness, patient: str, kafka_bootstrap: str
) -> None:
    response = await authz.stub.BreakGlass(
        pb.BreakGlassRequest(patient_id=patient, reason=REASON),
        metadata=authz.bearer(DOCTOR),
    )
    grant_id = response.grant.grant_id
    with authz.host.db.engine.connect() as connection:
        keys = (
            connection.execute(
                text(
                    "SELECT key FROM hin_outbox WHERE event_type = :t "
                    "ORDER BY seq DESC LIMIT 1"
                ),
                {"t": "hin.authz.v1.BreakGlassAccessGranted"},
            )
            .scalars()
            .all()
        )

    event = await asyncio.to_thread(
        find_event,
        kafka_bootstrap,
        events.BreakGlassAccessGranted,
        lambda e: e.grant_id == grant_id,
    )
    assert keys == [patient]
    assert event.patient_id == patient
    assert event.subject == "g-dr"
    assert event.reason == REASON


async def test_emergency_access_crosses_hospitals(authz: AuthzHarness) -> None:
    # g-p2 is held by hosp-b and has no consent for hosp-a.
    before = await authz.check(DOCTOR, "records.clinical.read", "g-p2")
    await authz.stub.BreakGlass(
        pb.BreakGlassRequest(patient_id="g-p2", reason=REASON),
        metadata=authz.bearer(DOCTOR),
    )
    after = await authz.check(DOCTOR, "records.clinical.read", "g-p2")
    assert before.reason_code == "NO_CARE_RELATIONSHIP"
    assert after.allowed is True
    assert after.emergency is True


async def test_unknown_patient_is_rejected(authz: AuthzHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await authz.stub.BreakGlass(
            pb.BreakGlassRequest(patient_id="g-nobody", reason=REASON),
            metadata=authz.bearer(DOCTOR),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
