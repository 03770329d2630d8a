"""AuthzService methods other than Check: consent, logs, roles, batches."""

from __future__ import annotations

import datetime

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import events_pb2 as events
from hin.records.v1 import events_pb2 as records
from mesh.network.cli import main
from tests.authz.conftest import AuthzHarness, Person

DOCTOR = Person("m-dr", ("doctor",), "hosp-a", practitioner_id="m-pr")
PATIENT = Person("m-pat", ("patient",), "hosp-a", patient_id="m-p1")
OTHER_PATIENT = Person("m-pat-2", ("patient",), "hosp-a", patient_id="m-p2")
PRIVACY = Person("m-priv", ("privacy_officer",), "hosp-a")
ADMIN = Person("m-admin", ("administrator",), "hosp-a")


@pytest.fixture(scope="module")
def world(authz: AuthzHarness) -> AuthzHarness:
    for patient in ("m-p1", "m-p2", "m-p3"):
        authz.register(patient, "hosp-a")
    authz.book("m-ap-1", "m-p1", "m-pr", "hosp-a")
    return authz


def _fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    return sorted(v.field for v in bad_request.field_violations)


async def test_grant_consent_validates_fields(world: AuthzHarness) -> None:
    past = world.clock() - datetime.timedelta(days=1)
    request = pb.GrantConsentRequest(purposes=[events.PURPOSE_UNSPECIFIED])
    request.expires_at.FromDatetime(past)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.GrantConsent(request, metadata=world.bearer(PATIENT))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(caught.value) == ["expires_at", "patient_id", "purposes[0]"]


async def test_grant_consent_is_idempotent(world: AuthzHarness) -> None:
    request = pb.GrantConsentRequest(
        patient_id="m-p1",
        grantee_organization_id="hosp-c",
        purposes=[events.PURPOSE_TREATMENT],
        idempotency_key="m-key-1",
    )
    first = await world.stub.GrantConsent(request, metadata=world.bearer(PATIENT))
    second = await world.stub.GrantConsent(request, metadata=world.bearer(PATIENT))
    assert first.consent.consent_id == second.consent.consent_id
    assert first.consent.status == pb.CONSENT_STATUS_ACTIVE


async def test_other_patient_cannot_grant(world: AuthzHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.GrantConsent(
            pb.GrantConsentRequest(patient_id="m-p1", grantee_organization_id="x"),
            metadata=world.bearer(OTHER_PATIENT),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_revoked_consent_listed_as_revoked(world: AuthzHarness) -> None:
    granted = await world.stub.GrantConsent(
        pb.GrantConsentRequest(patient_id="m-p3", grantee_organization_id="hosp-b"),
        metadata=world.bearer(PRIVACY),
    )
    await world.stub.RevokeConsent(
        pb.RevokeConsentRequest(consent_id=granted.consent.consent_id),
        metadata=world.bearer(PRIVACY),
    )
    listed = await world.stub.ListConsents(
        pb.ListConsentsRequest(patient_id="m-p3"), metadata=world.bearer(PRIVACY)
    )
    assert [c.consent_id for c in listed.consents] == [granted.consent.consent_id]
    assert listed.consents[0].status == pb.CONSENT_STATUS_REVOKED


async def test_consent_events_in_outbox(world: AuthzHarness) -> None:
    granted = await world.stub.GrantConsent(
        pb.GrantConsentRequest(patient_id="m-p2", grantee_organization_id="hosp-d"),
        metadata=world.bearer(OTHER_PATIENT),
    )
    await world.stub.RevokeConsent(
        pb.RevokeConsentRequest(consent_id=granted.consent.consent_id),
        metadata=world.bearer(OTHER_PATIENT),
    )
    with world.host.db.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT event_type, payload FROM hin_outbox WHERE key = 'm-p2' "
                "ORDER BY seq"
            )
        ).all()
    types = [row.event_type for row in rows]
    revoked = events.ConsentRevoked.FromString(rows[-1].payload)
    assert types == ["hin.authz.v1.ConsentGranted", "hin.authz.v1.ConsentRevoked"]
    assert revoked.consent_id == granted.consent.consent_id


async def test_unknown_consent_not_found(world: AuthzHarness) -> None:
    trace_id = "9a" * 16
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.RevokeConsent(
            pb.RevokeConsentRequest(consent_id="m-missing"),
            metadata=(
                *world.bearer(PATIENT),
                ("traceparent", f"00-{trace_id}-{'56' * 8}-01"),
            ),
        )
    rows = world.audit_rows(trace_id=trace_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # The transaction was rolled back, so the hook recorded the call instead.
    assert [(r.decision, r.status_code) for r in rows] == [("NOT_DECIDED", "NOT_FOUND")]


async def test_patient_reads_own_access_log(world: AuthzHarness) -> None:
    decision = await world.check(DOCTOR, "records.clinical.read", "m-p1")
    log = await world.stub.ListAccessLog(
        pb.ListAccessLogRequest(patient_id="m-p1"), metadata=world.bearer(PATIENT)
    )
    by_id = {record.audit_id: record for record in log.records}
    assert decision.audit_id in by_id
    assert by_id[decision.audit_id].subject == "m-dr"
    assert by_id[decision.audit_id].decision == pb.ACCESS_DECISION_ALLOW


async def test_patient_cannot_read_other_log(world: AuthzHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.ListAccessLog(
            pb.ListAccessLogRequest(patient_id="m-p1"),
            metadata=world.bearer(OTHER_PATIENT),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_access_log_pages(world: AuthzHarness) -> None:
    for _ in range(3):
        await world.check(DOCTOR, "records.demographics.read", "m-p1")
    first = await world.stub.ListAccessLog(
        pb.ListAccessLogRequest(patient_id="m-p1", page={"page_size": 2}),
        metadata=world.bearer(PATIENT),
    )
    second = await world.stub.ListAccessLog(
        pb.ListAccessLogRequest(
            patient_id="m-p1",
            page={"page_size": 2, "page_token": first.page.next_page_token},
        ),
        metadata=world.bearer(PATIENT),
    )
    first_sequences = [r.sequence for r in first.records]
    second_sequences = [r.sequence for r in second.records]
    assert len(first_sequences) == 2
    assert first_sequences[0] > first_sequences[1] > second_sequences[0]


async def test_disclosures_leave_out_own_reads(
    world: AuthzHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_read = await world.check(DOCTOR, "records.clinical.read", "m-p1")
    own_read = await world.check(PATIENT, "records.clinical.read", "m-p1")
    denied = await world.check(
        Person("m-dr-2", ("doctor",), "hosp-a", practitioner_id="m-pr-2"),
        "records.clinical.read",
        "m-p1",
    )
    response = await world.stub.AccountingOfDisclosures(
        pb.AccountingOfDisclosuresRequest(patient_id="m-p1"),
        metadata=world.bearer(PATIENT),
    )
    listed = {d.audit_id for d in response.disclosures}

    code = main(
        [
            "audit",
            "patient",
            "m-p1",
            "--database-url",
            str(world.host.db.url.render_as_string(hide_password=False)),
        ]
    )
    printed = capsys.readouterr().out

    assert doctor_read.audit_id in listed
    assert own_read.audit_id not in listed
    assert denied.audit_id not in listed
    assert code == 0
    assert "m-dr " in printed
    assert "m-dr-2" not in printed
    assert "m-pat " not in printed


async def test_verify_chain_needs_audit_role(world: AuthzHarness) -> None:
    report = await world.stub.VerifyAuditChain(
        pb.VerifyAuditChainRequest(), metadata=world.bearer(ADMIN)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.VerifyAuditChain(
            pb.VerifyAuditChainRequest(), metadata=world.bearer(DOCTOR)
        )
    assert report.intact, report.problem
    assert report.records_checked > 0
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_assigned_role_is_used(world: AuthzHarness) -> None:
    subject = pb.Subject(
        subject="m-new", kind=pb.SUBJECT_KIND_PERSON, organization_id="hosp-a"
    )
    before = await world.check(subject, "records.demographics.read", "m-p2")
    await world.stub.AssignRole(
        pb.AssignRoleRequest(
            subject="m-new", role="receptionist", organization_id="hosp-a"
        ),
        metadata=world.bearer(ADMIN),
    )
    after = await world.check(subject, "records.demographics.read", "m-p2")
    assert before.reason_code == "ROLE_NOT_PERMITTED"
    assert after.allowed is True


async def test_role_assignment_in_other_organization_denied(
    world: AuthzHarness,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.AssignRole(
            pb.AssignRoleRequest(
                subject="m-x", role="doctor", organization_id="hosp-b"
            ),
            metadata=world.bearer(ADMIN),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_assign_unknown_role_rejected(world: AuthzHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.AssignRole(
            pb.AssignRoleRequest(subject="m-x", role="service", organization_id="a"),
            metadata=world.bearer(ADMIN),
        )
    assert _fields(caught.value) == ["role"]


async def test_batch_decides_each_patient(world: AuthzHarness) -> None:
    from tests.authz.conftest import SIDECAR_METADATA

    trace_id = "ab" * 16
    response = await world.stub.CheckBatch(
        pb.CheckBatchRequest(
            subject=DOCTOR.subject_message(),
            action="records.demographics.read",
            patient_ids=["m-p1", "m-p2", "m-p3"],
            purpose=events.PURPOSE_TREATMENT,
            trace_id=trace_id,
        ),
        metadata=SIDECAR_METADATA,
    )
    rows = world.audit_rows(trace_id=trace_id)
    assert [d.patient_id for d in response.decisions] == ["m-p1", "m-p2", "m-p3"]
    assert [d.allowed for d in response.decisions] == [True, False, False]
    assert sorted(row.patient_id for row in rows) == ["m-p1", "m-p2", "m-p3"]


async def test_check_needs_service_caller(world: AuthzHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.Check(
            pb.CheckRequest(
                subject=DOCTOR.subject_message(),
                action="records.clinical.read",
                patient_id="m-p1",
                purpose=events.PURPOSE_TREATMENT,
            ),
            metadata=world.bearer(DOCTOR),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_check_validates_fields(world: AuthzHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.check(
            DOCTOR,
            "records.secrets.read",
            "m-p1",
            events.PURPOSE_UNSPECIFIED,
            trace_id="xyz",
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(caught.value) == ["action", "purpose", "trace_id"]


async def test_merged_patient_resolves_to_survivor(world: AuthzHarness) -> None:
    world.register("m-old", "hosp-a")
    world.book("m-ap-old", "m-old", "m-pr-merge", "hosp-a")
    merged = records.PatientsMerged(
        surviving_patient_id="m-p3", merged_patient_id="m-old"
    )
    world.apply(world.handlers.on_patients_merged, merged)
    doctor = Person("m-dr-m", ("doctor",), "hosp-a", practitioner_id="m-pr-merge")

    by_old_id = await world.check(doctor, "records.clinical.read", "m-old")
    by_survivor = await world.check(doctor, "records.clinical.read", "m-p3")
    rows = world.audit_rows(audit_id=by_old_id.audit_id)
    assert by_old_id.allowed is True
    assert by_survivor.allowed is True
    assert rows[0].patient_id == "m-p3"


async def test_denial_emits_access_denied(world: AuthzHarness) -> None:
    denied = await world.check(
        Person("m-dr-3", ("doctor",), "hosp-a", practitioner_id="m-pr-3"),
        "records.clinical.read",
        "m-p2",
    )
    with world.host.db.engine.connect() as connection:
        payloads = (
            connection.execute(
                text(
                    "SELECT payload FROM hin_outbox WHERE event_type = "
                    "'hin.authz.v1.AccessDenied' AND key = 'm-p2'"
                )
            )
            .scalars()
            .all()
        )
    subjects = [events.AccessDenied.FromString(p).subject for p in payloads]
    assert denied.allowed is False
    assert "m-dr-3" in subjects


async def test_own_failed_calls_are_audited(world: AuthzHarness) -> None:
    expired = world.token(PATIENT, lifetime_seconds=-120)
    trace_id = "cd" * 16
    metadata = (
        ("authorization", f"Bearer {expired}"),
        ("traceparent", f"00-{trace_id}-{'12' * 8}-01"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.stub.ListAccessLog(
            pb.ListAccessLogRequest(patient_id="m-p1"), metadata=metadata
        )
    rows = world.audit_rows(trace_id=trace_id)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(rows) == 1
    assert rows[0].decision == "NOT_DECIDED"
    assert rows[0].status_code == "UNAUTHENTICATED"
    assert rows[0].reason_code == "TOKEN_EXPIRED"
    assert rows[0].method == "/hin.authz.v1.AuthzService/ListAccessLog"


async def test_check_from_person_is_audited(world: AuthzHarness) -> None:
    trace_id = "ef" * 16
    metadata = (
        *world.bearer(DOCTOR),
        ("traceparent", f"00-{trace_id}-{'34' * 8}-01"),
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await world.stub.Check(
            pb.CheckRequest(
                subject=DOCTOR.subject_message(),
                action="records.clinical.read",
                patient_id="m-p2",
                purpose=events.PURPOSE_TREATMENT,
            ),
            metadata=metadata,
        )
    rows = world.audit_rows(trace_id=trace_id)
    assert [(r.subject, r.status_code, r.reason_code) for r in rows] == [
        ("m-dr", "PERMISSION_DENIED", "CALLER_NOT_SERVICE")
    ]
