"""Turn a request's subject and the store's facts into an audited decision.

Shared by the servicer's decision methods (Check, CheckBatch) and by its
person-facing methods, which authorize their own callers with the same rules.
Everything here runs inside the caller's transaction, so a decision and its
audit record commit together or not at all.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlmodel import Session

from hin.authz.v1 import events_pb2 as events
from mesh.runtime.principal import Principal, PrincipalKind
from svc_authz import store
from svc_authz.domain.policy import Facts, Outcome, Subject, SubjectKind, decide

_KINDS = {
    PrincipalKind.PERSON: SubjectKind.PERSON,
    PrincipalKind.SERVICE: SubjectKind.SERVICE,
    PrincipalKind.ANONYMOUS: SubjectKind.ANONYMOUS,
}


@dataclass(frozen=True)
class AccessRequest:
    """One access to decide, with where it came from."""

    subject: Subject
    action: str
    patient_id: str
    purpose: int
    organization_id: str
    trace_id: str
    method: str
    calling_service: str


@dataclass(frozen=True)
class AuditedOutcome:
    """A decision and the id of the audit record that contains it."""

    outcome: Outcome
    patient_id: str
    audit_id: str


def subject_from_principal(principal: Principal) -> Subject:
    """Describe an authenticated principal as a policy Subject."""
    return Subject(
        subject=principal.subject,
        kind=_KINDS[principal.kind],
        roles=principal.roles,
        organization_id=principal.organization_id,
        practitioner_id=principal.practitioner_id,
        patient_id=principal.patient_id,
        service_name=principal.service_name,
    )


def gather_facts(
    session: Session,
    subject: Subject,
    *,
    patient_id: str,
    organization_id: str,
    now: datetime.datetime,
) -> Facts:
    """Load what the rules need about this subject and patient."""
    assigned = (
        store.assigned_roles(
            session, subject=subject.subject, organization_id=subject.organization_id
        )
        if subject.kind is SubjectKind.PERSON
        else frozenset()
    )
    own = (
        store.resolve_patient(session, subject.patient_id) if subject.patient_id else ""
    )
    if not patient_id:
        return Facts(own_patient_id=own, assigned_roles=assigned)

    patient = store.get_patient(session, patient_id)
    return Facts(
        patient_id=patient_id,
        own_patient_id=own,
        patient_known=patient is not None,
        data_organization_id=organization_id
        or (patient.managing_organization_id if patient else ""),
        practitioner_relationship=store.has_practitioner_relationship(
            session,
            patient_id=patient_id,
            practitioner_id=subject.practitioner_id,
            now=now,
        ),
        lab_order_at_organization=store.has_lab_order_at(
            session,
            patient_id=patient_id,
            organization_id=subject.organization_id,
            now=now,
        ),
        break_glass=store.has_active_grant(
            session, patient_id=patient_id, subject=subject.subject, now=now
        ),
        consents=store.active_consents(session, patient_id, now),
        assigned_roles=assigned,
    )


def decide_and_audit(
    session: Session, request: AccessRequest, *, outbox: object, now: datetime.datetime
) -> AuditedOutcome:
    """Decide one access, append its audit record, and emit AccessDenied on deny."""
    patient_id = (
        store.resolve_patient(session, request.patient_id) if request.patient_id else ""
    )
    facts = gather_facts(
        session,
        request.subject,
        patient_id=patient_id,
        organization_id=request.organization_id,
        now=now,
    )
    outcome = decide(
        request.subject, action=request.action, purpose=request.purpose, facts=facts
    )
    record = store.append_audit(
        session,
        store.AuditEntry(
            subject=request.subject.subject,
            subject_kind=request.subject.kind.value,
            roles=",".join(sorted(request.subject.roles | facts.assigned_roles)),
            organization_id=request.subject.organization_id,
            calling_service=request.calling_service,
            method=request.method,
            action=request.action,
            patient_id=patient_id,
            purpose=request.purpose,
            decision="ALLOW" if outcome.allowed else "DENY",
            reason_code=outcome.reason_code,
            reason=outcome.reason,
            emergency=outcome.emergency,
            redact_clinical=outcome.redact_clinical,
            trace_id=request.trace_id,
            status_code="",
        ),
        now,
    )
    if not outcome.allowed:
        denied = events.AccessDenied(
            subject=request.subject.subject,
            action=request.action,
            patient_id=patient_id,
            reason=outcome.reason_code,
            purpose=request.purpose,  # type: ignore[arg-type]
        )
        denied.context.organization_id = request.subject.organization_id
        denied.context.trace_id = request.trace_id
        outbox.add(  # type: ignore[attr-defined]
            session, denied, key=patient_id or request.subject.subject
        )
    return AuditedOutcome(
        outcome=outcome, patient_id=patient_id, audit_id=record.audit_id
    )
