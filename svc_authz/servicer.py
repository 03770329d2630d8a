"""AuthzServiceServicer: validate, authorize the caller, decide, audit, emit.

Decision methods (Check, CheckBatch, RecordAudit) serve other services: the
caller must be a service principal, and the person travels in the request.
Person-facing methods authorize their own caller with the same rules and
write one audit record for that decision, in the transaction of the change.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlmodel import Session

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import authz_service_pb2_grpc as pb_grpc
from hin.authz.v1 import events_pb2 as events
from hin.common.v1 import types_pb2
from mesh.runtime.authz import decided_in_current_call, mark_decided, parse_action
from mesh.runtime.interceptors import CallOutcome
from mesh.runtime.principal import Principal, PrincipalKind, current_principal
from mesh.runtime.storage import Database
from mesh.runtime.telemetry import current_trace_id
from mesh.runtime.validation import Violations
from svc_authz import store
from svc_authz.decisions import (
    AccessRequest,
    AuditedOutcome,
    decide_and_audit,
    subject_from_principal,
)
from svc_authz.domain.policy import (
    BREAK_GLASS_ROLES,
    ROLES,
    Outcome,
    Subject,
    SubjectKind,
)
from svc_authz.errors import (
    AccessNotPermitted,
    CallerNotService,
    ConsentNotFound,
    PatientNotKnown,
)

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Clock = Callable[[], datetime.datetime]

MAX_BATCH_PATIENTS = 1000
MAX_ID_LENGTH = 64
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
BREAK_GLASS_DEFAULT_MINUTES = 60
BREAK_GLASS_MAX_MINUTES = 240
BREAK_GLASS_MIN_REASON = 10
#: Maximum length of a break-the-glass reason, the width of
#: break_glass_grants.reason. A much longer one would also make the
#: BreakGlassAccessGranted event too large for the outbox relay's producer,
#: which dead-letters such an event, so the privacy officers' alert is lost.
BREAK_GLASS_MAX_REASON = 1000
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

_SUBJECT_KINDS = {
    pb.SUBJECT_KIND_PERSON: SubjectKind.PERSON,
    pb.SUBJECT_KIND_SERVICE: SubjectKind.SERVICE,
    pb.SUBJECT_KIND_ANONYMOUS: SubjectKind.ANONYMOUS,
}
_SUBJECT_KIND_NUMBERS = {kind.value: number for number, kind in _SUBJECT_KINDS.items()}
_DECISIONS = {
    "ALLOW": pb.ACCESS_DECISION_ALLOW,
    "DENY": pb.ACCESS_DECISION_DENY,
    "NOT_DECIDED": pb.ACCESS_DECISION_NOT_DECIDED,
}


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AuthzServicer(pb_grpc.AuthzServiceServicer):
    """Serve hin.authz.v1.AuthzService.

    Args:
        db: the authz database.
        outbox: the service's mesh.runtime.events.Outbox.
        clock: current time in UTC; tests pass a settable one.
        trust_loopback_callers: accept decision calls from callers without a
            service identity. Only for running without the mesh, where no
            sidecar attests the calling service.
    """

    def __init__(
        self,
        *,
        db: Database,
        outbox: Any,
        clock: Clock = utc_now,
        trust_loopback_callers: bool = False,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._clock = clock
        self._trust_loopback = trust_loopback_callers

    # Decisions for other services ------------------------------------------

    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        violations = Violations()
        subject = _validate_subject(request.subject, violations)
        _validate_access(request, violations)
        _validate_id(request.patient_id, "patient_id", violations)
        violations.check()
        calling_service = self._require_service_caller()

        access = AccessRequest(
            subject=subject,
            action=request.action,
            patient_id=request.patient_id,
            purpose=request.purpose,
            organization_id=request.organization_id,
            trace_id=request.trace_id or current_trace_id(),
            method=request.method,
            calling_service=calling_service,
        )
        now = self._clock()
        audited = await self._db.run(
            lambda session: decide_and_audit(
                session, access, outbox=self._outbox, now=now
            )
        )
        mark_decided()
        logger.info(
            "access decided",
            extra={
                "audit_id": audited.audit_id,
                "action": request.action,
                "allowed": audited.outcome.allowed,
                "reason_code": audited.outcome.reason_code,
            },
        )
        outcome = audited.outcome
        return pb.CheckResponse(
            allowed=outcome.allowed,
            reason=outcome.reason,
            reason_code=outcome.reason_code,
            emergency=outcome.emergency,
            redact_clinical=outcome.redact_clinical,
            audit_id=audited.audit_id,
        )

    async def CheckBatch(
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        violations = Violations()
        subject = _validate_subject(request.subject, violations)
        _validate_access(request, violations)
        if not request.patient_ids:
            violations.add("patient_ids", "is required; name each patient touched")
        if len(request.patient_ids) > MAX_BATCH_PATIENTS:
            violations.add(
                "patient_ids",
                f"has {len(request.patient_ids)} ids; at most {MAX_BATCH_PATIENTS} "
                "per call, so split the batch",
            )
        for index, patient_id in enumerate(request.patient_ids):
            if not patient_id:
                violations.add(f"patient_ids[{index}]", "is empty")
            _validate_id(patient_id, f"patient_ids[{index}]", violations)
        violations.check()
        calling_service = self._require_service_caller()

        trace_id = request.trace_id or current_trace_id()
        accesses = [
            AccessRequest(
                subject=subject,
                action=request.action,
                patient_id=patient_id,
                purpose=request.purpose,
                organization_id=request.organization_id,
                trace_id=trace_id,
                method=request.method,
                calling_service=calling_service,
            )
            for patient_id in request.patient_ids
        ]
        now = self._clock()

        def decide_all(session: Session) -> list[AuditedOutcome]:
            return [
                decide_and_audit(session, access, outbox=self._outbox, now=now)
                for access in accesses
            ]

        results = await self._db.run(decide_all)
        mark_decided()
        return pb.CheckBatchResponse(
            decisions=[
                pb.PatientDecision(
                    patient_id=requested,
                    allowed=item.outcome.allowed,
                    reason=item.outcome.reason,
                    reason_code=item.outcome.reason_code,
                    emergency=item.outcome.emergency,
                    redact_clinical=item.outcome.redact_clinical,
                    audit_id=item.audit_id,
                )
                for requested, item in zip(request.patient_ids, results, strict=True)
            ]
        )

    async def RecordAudit(
        self, request: pb.RecordAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordAuditResponse:
        violations = Violations()
        subject = _validate_subject(request.subject, violations)
        if not request.method:
            violations.add("method", "is required")
        if not request.status_code:
            violations.add("status_code", "is required, such as 'UNAUTHENTICATED'")
        elif request.status_code not in grpc.StatusCode.__members__:
            violations.add("status_code", f"{request.status_code!r} is not a gRPC code")
        _validate_trace_id(request.trace_id, violations)
        _validate_id(request.patient_id, "patient_id", violations)
        violations.check()
        calling_service = self._require_service_caller()

        entry = store.AuditEntry(
            subject=subject.subject,
            subject_kind=subject.kind.value,
            roles=",".join(sorted(subject.roles)),
            organization_id=subject.organization_id,
            calling_service=calling_service,
            method=request.method,
            action="",
            patient_id=request.patient_id,
            purpose=0,
            decision="NOT_DECIDED",
            reason_code=request.reason,
            reason="call ended before any access decision",
            emergency=False,
            redact_clinical=False,
            trace_id=request.trace_id or current_trace_id(),
            status_code=request.status_code,
        )
        now = self._clock()
        row = await self._db.run(
            lambda session: store.append_audit(session, entry, now)
        )
        mark_decided()
        return pb.RecordAuditResponse(audit_id=row.audit_id)

    def _require_service_caller(self) -> str:
        principal = current_principal()
        if principal.kind is PrincipalKind.SERVICE:
            return principal.service_name
        if self._trust_loopback and principal.kind is PrincipalKind.ANONYMOUS:
            return "unattested"
        raise CallerNotService(
            "decision methods are for services; the caller "
            f"{principal.subject!r} has no service identity (call through the "
            "mesh sidecar)",
            reason="CALLER_NOT_SERVICE",
        )

    # Person-facing methods ---------------------------------------------------

    async def AssignRole(
        self, request: pb.AssignRoleRequest, context: grpc.aio.ServicerContext
    ) -> pb.AssignRoleResponse:
        violations = Violations()
        violations.require(request.subject, "subject")
        if request.role not in ROLES or request.role == "service":
            violations.add(
                "role",
                f"{request.role!r} is not a person's role; expected one of "
                + ", ".join(r for r in ROLES if r != "service"),
            )
        violations.require(request.organization_id, "organization_id")
        violations.check()
        caller = current_principal()
        now = self._clock()

        def assign(session: Session) -> tuple[AuditedOutcome, pb.AssignRoleResponse]:
            if (
                caller.kind is PrincipalKind.PERSON
                and caller.organization_id != request.organization_id
            ):
                refused = Outcome(
                    False,
                    "OTHER_ORGANIZATION",
                    "roles are assigned only in the caller's own organization",
                )
                audited = self._audit_own(
                    session,
                    caller,
                    "authz.admin.write",
                    "",
                    refused,
                    events.PURPOSE_OPERATIONS,
                    now,
                )
                return audited, pb.AssignRoleResponse()
            audited = self._authorize_caller(
                session, caller, "authz.admin.write", "", now
            )
            if not audited.outcome.allowed:
                return audited, pb.AssignRoleResponse()
            row = store.find_assignment(
                session,
                subject=request.subject,
                role=request.role,
                organization_id=request.organization_id,
            )
            if row is None:
                row = store.RoleAssignmentRow(
                    assignment_id=store.new_id(),
                    subject=request.subject,
                    role=request.role,
                    organization_id=request.organization_id,
                    assigned_by=caller.subject,
                    assigned_at=now,
                )
                session.add(row)
                event = events.RoleAssigned(
                    subject=request.subject,
                    role=request.role,
                    organization_id=request.organization_id,
                )
                event.context.organization_id = request.organization_id
                self._outbox.add(session, event, key=request.subject)
            return audited, pb.AssignRoleResponse(assignment=_assignment_pb(row))

        return await self._run_authorized(assign)

    async def GrantConsent(
        self, request: pb.GrantConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GrantConsentResponse:
        now = self._clock()
        violations = Violations()
        violations.require(request.patient_id, "patient_id")
        _validate_id(request.patient_id, "patient_id", violations)
        for index, purpose in enumerate(request.purposes):
            if purpose == events.PURPOSE_UNSPECIFIED or purpose not in (
                events.Purpose.values()
            ):
                violations.add(f"purposes[{index}]", f"{purpose} is not a purpose")
        if request.HasField("expires_at") and (
            request.expires_at.ToDatetime(datetime.UTC) <= now
        ):
            violations.add("expires_at", "is in the past; give a future time or none")
        violations.check()
        caller = current_principal()
        scope = f"GrantConsent:{caller.subject}"

        def grant(session: Session) -> tuple[AuditedOutcome, pb.GrantConsentResponse]:
            patient_id = store.resolve_patient(session, request.patient_id)
            audited = self._authorize_caller(
                session, caller, "authz.consent.write", patient_id, now
            )
            if not audited.outcome.allowed:
                return audited, pb.GrantConsentResponse()
            replay = _replay(
                session, scope, request.idempotency_key, pb.GrantConsentResponse
            )
            if replay is not None:
                return audited, replay

            row = store.ConsentRow(
                consent_id=store.new_id(),
                patient_id=patient_id,
                grantee_organization_id=request.grantee_organization_id,
                purposes=store.format_purposes(list(request.purposes)),
                granted_by=caller.subject,
                granted_at=now,
                expires_at=(
                    request.expires_at.ToDatetime(datetime.UTC)
                    if request.HasField("expires_at")
                    else None
                ),
            )
            store.add_consent(session, row)

            event = events.ConsentGranted(
                consent_id=row.consent_id,
                patient_id=patient_id,
                grantee_organization_id=row.grantee_organization_id,
                purposes=sorted(store.parse_purposes(row.purposes)),  # type: ignore[arg-type]
            )
            if row.expires_at is not None:
                event.expires_at.FromDatetime(row.expires_at)
            event.context.organization_id = caller.organization_id
            self._outbox.add(session, event, key=patient_id)

            response = pb.GrantConsentResponse(consent=_consent_pb(row, now))
            _remember(session, scope, request.idempotency_key, response, now)
            return audited, response

        return await self._run_authorized(grant)

    async def RevokeConsent(
        self, request: pb.RevokeConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeConsentResponse:
        violations = Violations()
        violations.require(request.consent_id, "consent_id")
        violations.check()
        caller = current_principal()
        now = self._clock()

        def revoke(session: Session) -> tuple[AuditedOutcome, pb.RevokeConsentResponse]:
            row = store.get_consent(session, request.consent_id)
            if row is None:
                raise ConsentNotFound(
                    f"consent {request.consent_id} not found; list the patient's "
                    "consents with ListConsents",
                    reason="CONSENT_NOT_FOUND",
                )
            audited = self._authorize_caller(
                session, caller, "authz.consent.write", row.patient_id, now
            )
            if not audited.outcome.allowed:
                return audited, pb.RevokeConsentResponse()
            if row.revoked_at is None:
                row.revoked_at = now
                session.add(row)
                event = events.ConsentRevoked(
                    consent_id=row.consent_id,
                    patient_id=row.patient_id,
                    grantee_organization_id=row.grantee_organization_id,
                )
                event.context.organization_id = caller.organization_id
                self._outbox.add(session, event, key=row.patient_id)
            return audited, pb.RevokeConsentResponse(consent=_consent_pb(row, now))

        return await self._run_authorized(revoke)

    async def ListConsents(
        self, request: pb.ListConsentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConsentsResponse:
        violations = Violations()
        violations.require(request.patient_id, "patient_id")
        offset, size = _page(request.page, violations)
        violations.check()
        caller = current_principal()
        now = self._clock()

        def list_rows(
            session: Session,
        ) -> tuple[AuditedOutcome, pb.ListConsentsResponse]:
            patient_id = store.resolve_patient(session, request.patient_id)
            audited = self._authorize_caller(
                session, caller, "authz.consent.read", patient_id, now
            )
            if not audited.outcome.allowed:
                return audited, pb.ListConsentsResponse()
            rows = store.list_consents(
                session, patient_id, offset=offset, limit=size + 1
            )
            next_token = str(offset + size) if len(rows) > size else ""
            return audited, pb.ListConsentsResponse(
                consents=[_consent_pb(row, now) for row in rows[:size]],
                page=types_pb2.PageResponse(next_page_token=next_token),
            )

        return await self._run_authorized(list_rows)

    async def BreakGlass(
        self, request: pb.BreakGlassRequest, context: grpc.aio.ServicerContext
    ) -> pb.BreakGlassResponse:
        violations = Violations()
        violations.require(request.patient_id, "patient_id")
        _validate_id(request.patient_id, "patient_id", violations)
        if len(request.reason.strip()) < BREAK_GLASS_MIN_REASON:
            violations.add(
                "reason",
                f"must state why emergency access is needed, in at least "
                f"{BREAK_GLASS_MIN_REASON} characters",
            )
        if len(request.reason.strip()) > BREAK_GLASS_MAX_REASON:
            violations.add(
                "reason",
                f"is {len(request.reason.strip())} characters; at most "
                f"{BREAK_GLASS_MAX_REASON}",
            )
        if not 0 <= request.duration_minutes <= BREAK_GLASS_MAX_MINUTES:
            violations.add(
                "duration_minutes",
                f"is {request.duration_minutes}; expected 0 (meaning "
                f"{BREAK_GLASS_DEFAULT_MINUTES}) to {BREAK_GLASS_MAX_MINUTES}",
            )
        violations.check()
        caller = current_principal()
        now = self._clock()
        minutes = request.duration_minutes or BREAK_GLASS_DEFAULT_MINUTES
        scope = f"BreakGlass:{caller.subject}"

        def grant(session: Session) -> tuple[AuditedOutcome, pb.BreakGlassResponse]:
            patient_id = store.resolve_patient(session, request.patient_id)
            roles = caller.roles | store.assigned_roles(
                session, subject=caller.subject, organization_id=caller.organization_id
            )
            permitted = caller.kind is PrincipalKind.PERSON and bool(
                roles & BREAK_GLASS_ROLES
            )
            outcome = (
                Outcome(
                    True,
                    "BREAK_GLASS_GRANTED",
                    "emergency access granted; the privacy officer is notified",
                    emergency=True,
                )
                if permitted
                else Outcome(
                    False,
                    "ROLE_NOT_PERMITTED",
                    "only a doctor or a nurse may break the glass",
                )
            )
            if permitted and store.get_patient(session, patient_id) is None:
                raise PatientNotKnown(
                    f"patient {patient_id} is not known to svc_authz; check the id",
                    reason="PATIENT_UNKNOWN",
                )
            audited = self._audit_own(
                session,
                caller,
                "authz.break_glass.write",
                patient_id,
                outcome,
                events.PURPOSE_EMERGENCY,
                now,
            )
            if not permitted:
                return audited, pb.BreakGlassResponse()
            replay = _replay(
                session, scope, request.idempotency_key, pb.BreakGlassResponse
            )
            if replay is not None:
                return audited, replay

            row = store.BreakGlassGrantRow(
                grant_id=store.new_id(),
                patient_id=patient_id,
                subject=caller.subject,
                practitioner_id=caller.practitioner_id,
                organization_id=caller.organization_id,
                reason=request.reason.strip(),
                granted_at=now,
                expires_at=now + datetime.timedelta(minutes=minutes),
            )
            store.add_grant(session, row)

            event = events.BreakGlassAccessGranted(
                grant_id=row.grant_id,
                patient_id=patient_id,
                subject=caller.subject,
                organization_id=caller.organization_id,
                reason=row.reason,
            )
            event.expires_at.FromDatetime(row.expires_at)
            event.context.organization_id = caller.organization_id
            self._outbox.add(session, event, key=patient_id)

            response = pb.BreakGlassResponse(grant=_grant_pb(row))
            _remember(session, scope, request.idempotency_key, response, now)
            return audited, response

        response = await self._run_authorized(grant)
        logger.warning(
            "break-the-glass access granted",
            extra={"grant_id": response.grant.grant_id, "subject": caller.subject},
        )
        return response

    async def ListAccessLog(
        self, request: pb.ListAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccessLogResponse:
        violations = Violations()
        violations.require(request.patient_id, "patient_id")
        before, size = _sequence_page(request.page, violations)
        violations.check()
        caller = current_principal()
        now = self._clock()

        def list_rows(
            session: Session,
        ) -> tuple[AuditedOutcome, pb.ListAccessLogResponse]:
            patient_id = store.resolve_patient(session, request.patient_id)
            audited = self._authorize_caller(
                session, caller, "authz.audit.read", patient_id, now
            )
            if not audited.outcome.allowed:
                return audited, pb.ListAccessLogResponse()
            rows = store.list_patient_audit(
                session, patient_id, before_sequence=before, limit=size + 1
            )
            next_token = str(rows[size - 1].sequence) if len(rows) > size else ""
            return audited, pb.ListAccessLogResponse(
                records=[audit_record_pb(row) for row in rows[:size]],
                page=types_pb2.PageResponse(next_page_token=next_token),
            )

        return await self._run_authorized(list_rows)

    async def AccountingOfDisclosures(
        self,
        request: pb.AccountingOfDisclosuresRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.AccountingOfDisclosuresResponse:
        violations = Violations()
        violations.require(request.patient_id, "patient_id")
        before, size = _sequence_page(request.page, violations)
        violations.check()
        since = (
            store.format_time(request.since.ToDatetime(datetime.UTC))
            if request.HasField("since")
            else ""
        )
        caller = current_principal()
        now = self._clock()

        def list_rows(
            session: Session,
        ) -> tuple[AuditedOutcome, pb.AccountingOfDisclosuresResponse]:
            patient_id = store.resolve_patient(session, request.patient_id)
            audited = self._authorize_caller(
                session, caller, "authz.audit.read", patient_id, now
            )
            if not audited.outcome.allowed:
                return audited, pb.AccountingOfDisclosuresResponse()
            rows = store.list_patient_audit(
                session,
                patient_id,
                before_sequence=before,
                limit=size + 1,
                allowed_only=True,
                since=since,
                exclude_patient_role=True,
            )
            next_token = str(rows[size - 1].sequence) if len(rows) > size else ""
            return audited, pb.AccountingOfDisclosuresResponse(
                disclosures=[_disclosure_pb(row) for row in rows[:size]],
                page=types_pb2.PageResponse(next_page_token=next_token),
            )

        return await self._run_authorized(list_rows)

    async def VerifyAuditChain(
        self, request: pb.VerifyAuditChainRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyAuditChainResponse:
        caller = current_principal()
        now = self._clock()

        def verify(
            session: Session,
        ) -> tuple[AuditedOutcome, pb.VerifyAuditChainResponse]:
            # Verify first, so the record of this check is not part of it.
            report = store.verify_audit(session)
            audited = self._authorize_caller(
                session, caller, "authz.audit.read", "", now
            )
            if not audited.outcome.allowed:
                return audited, pb.VerifyAuditChainResponse()
            return audited, pb.VerifyAuditChainResponse(
                intact=report.intact,
                records_checked=report.records_checked,
                first_broken_sequence=report.first_broken_sequence,
                first_broken_audit_id=report.first_broken_audit_id,
                problem=report.problem,
            )

        response = await self._run_authorized(verify)
        if not response.intact:
            logger.error(
                "audit chain is broken",
                extra={"sequence": response.first_broken_sequence},
            )
        return response

    # Calls without a decision ------------------------------------------------

    async def audit_call(self, outcome: CallOutcome) -> None:
        """Audit one of this service's own calls that ended without a decision.

        The host awaits this before the status is sent, so a rejected token,
        an invalid request or a decision call from a non-service caller is in
        the trail before the caller receives the status.
        """
        if decided_in_current_call():
            return
        subject = subject_from_principal(outcome.principal)
        entry = store.AuditEntry(
            subject=subject.subject,
            subject_kind=subject.kind.value,
            roles=",".join(sorted(subject.roles)),
            organization_id=subject.organization_id,
            calling_service="authz",
            method=outcome.method,
            action="",
            patient_id="",
            purpose=0,
            decision="NOT_DECIDED",
            reason_code=outcome.reason,
            reason="call ended before any access decision",
            emergency=False,
            redact_clinical=False,
            trace_id=outcome.trace_id,
            status_code=outcome.code.name,
        )
        now = self._clock()
        try:
            await self._db.run(lambda session: store.append_audit(session, entry, now))
        except Exception:
            # NOTE: the status still goes out; this line, with its trace id, is
            # the only trace of the call.
            logger.exception(
                "audit record of a call without decision was not written",
                extra={"rpc_method": outcome.method, "trace_id": outcome.trace_id},
            )

    # Shared steps --------------------------------------------------------------

    def _authorize_caller(
        self,
        session: Session,
        caller: Principal,
        action: str,
        patient_id: str,
        now: datetime.datetime,
    ) -> AuditedOutcome:
        return decide_and_audit(
            session,
            AccessRequest(
                subject=subject_from_principal(caller),
                action=action,
                patient_id=patient_id,
                purpose=events.PURPOSE_PATIENT_REQUEST
                if caller.patient_id
                else events.PURPOSE_OPERATIONS,
                organization_id="",
                trace_id=current_trace_id(),
                method="",
                calling_service="authz",
            ),
            outbox=self._outbox,
            now=now,
        )

    def _audit_own(
        self,
        session: Session,
        caller: Principal,
        action: str,
        patient_id: str,
        outcome: Outcome,
        purpose: int,
        now: datetime.datetime,
    ) -> AuditedOutcome:
        subject = subject_from_principal(caller)
        row = store.append_audit(
            session,
            store.AuditEntry(
                subject=subject.subject,
                subject_kind=subject.kind.value,
                roles=",".join(sorted(subject.roles)),
                organization_id=subject.organization_id,
                calling_service="authz",
                method="",
                action=action,
                patient_id=patient_id,
                purpose=purpose,
                decision="ALLOW" if outcome.allowed else "DENY",
                reason_code=outcome.reason_code,
                reason=outcome.reason,
                emergency=outcome.emergency,
                redact_clinical=False,
                trace_id=current_trace_id(),
                status_code="",
            ),
            now,
        )
        return AuditedOutcome(
            outcome=outcome, patient_id=patient_id, audit_id=row.audit_id
        )

    async def _run_authorized(
        self, fn: Callable[[Session], tuple[AuditedOutcome, M]]
    ) -> M:
        """Run ``fn`` in one transaction; raise after commit when it was denied.

        The denial's audit record must be committed, so the transaction ends
        normally and the error is raised afterwards.
        """
        audited, response = await self._db.run(fn)
        mark_decided()
        if not audited.outcome.allowed:
            raise AccessNotPermitted(
                f"access denied: {audited.outcome.reason}",
                reason=audited.outcome.reason_code,
                metadata={"audit_id": audited.audit_id},
            )
        return response


# Validation ---------------------------------------------------------------------


def _validate_subject(subject: pb.Subject, violations: Violations) -> Subject:
    kind = _SUBJECT_KINDS.get(subject.kind)
    if kind is None:
        violations.add("subject.kind", "is required: person, service or anonymous")
        kind = SubjectKind.ANONYMOUS
    if kind is not SubjectKind.ANONYMOUS and not subject.subject:
        violations.add("subject.subject", "is required")
    return Subject(
        subject=subject.subject or "anonymous",
        kind=kind,
        roles=frozenset(subject.roles),
        organization_id=subject.organization_id,
        practitioner_id=subject.practitioner_id,
        patient_id=subject.patient_id,
        service_name=subject.service_name,
    )


def _validate_access(
    request: pb.CheckRequest | pb.CheckBatchRequest, violations: Violations
) -> None:
    try:
        parse_action(request.action)
    except ValueError as exc:
        violations.add("action", str(exc))
    if request.purpose == events.PURPOSE_UNSPECIFIED:
        violations.add("purpose", "is required, such as PURPOSE_TREATMENT")
    elif request.purpose not in events.Purpose.values():
        violations.add("purpose", f"{request.purpose} is not a purpose")
    _validate_trace_id(request.trace_id, violations)


def _validate_trace_id(trace_id: str, violations: Violations) -> None:
    if trace_id and not _TRACE_ID.match(trace_id):
        violations.add("trace_id", "must be 32 lowercase hex digits (W3C trace id)")


def _validate_id(value: str, field: str, violations: Violations) -> None:
    if len(value) > MAX_ID_LENGTH:
        violations.add(field, f"is {len(value)} characters; at most {MAX_ID_LENGTH}")


def _page_size(page: types_pb2.PageRequest, violations: Violations) -> int:
    if page.page_size < 0:
        violations.add("page.page_size", "must not be negative")
    if page.page_size <= 0:
        return DEFAULT_PAGE_SIZE
    return min(page.page_size, MAX_PAGE_SIZE)


def _page(page: types_pb2.PageRequest, violations: Violations) -> tuple[int, int]:
    size = _page_size(page, violations)
    if page.page_token and not page.page_token.isdigit():
        violations.add("page.page_token", "is not a token from a previous page")
        return 0, size
    return int(page.page_token or 0), size


def _sequence_page(
    page: types_pb2.PageRequest, violations: Violations
) -> tuple[int, int]:
    return _page(page, violations)


# Idempotency -----------------------------------------------------------------


def _replay(session: Session, scope: str, key: str, response_type: type[M]) -> M | None:
    if not key:
        return None
    stored = store.stored_response(session, scope, key)
    if stored is None:
        return None
    response = response_type()
    response.ParseFromString(stored)
    return response


def _remember(
    session: Session, scope: str, key: str, response: Message, now: datetime.datetime
) -> None:
    if key:
        store.store_response(session, scope, key, response.SerializeToString(), now)


# Conversions -----------------------------------------------------------------


def _timestamp(moment: datetime.datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(store.as_utc(moment))
    return stamp


def _consent_pb(row: store.ConsentRow, now: datetime.datetime) -> pb.Consent:
    if row.revoked_at is not None:
        status = pb.CONSENT_STATUS_REVOKED
    elif row.expires_at is not None and store.as_utc(row.expires_at) <= now:
        status = pb.CONSENT_STATUS_EXPIRED
    else:
        status = pb.CONSENT_STATUS_ACTIVE
    return pb.Consent(
        consent_id=row.consent_id,
        patient_id=row.patient_id,
        grantee_organization_id=row.grantee_organization_id,
        purposes=sorted(store.parse_purposes(row.purposes)),  # type: ignore[arg-type]
        granted_at=_timestamp(row.granted_at),
        expires_at=_timestamp(row.expires_at),
        revoked_at=_timestamp(row.revoked_at),
        granted_by=row.granted_by,
        status=status,
    )


def _grant_pb(row: store.BreakGlassGrantRow) -> pb.BreakGlassGrant:
    return pb.BreakGlassGrant(
        grant_id=row.grant_id,
        patient_id=row.patient_id,
        subject=row.subject,
        practitioner_id=row.practitioner_id,
        organization_id=row.organization_id,
        reason=row.reason,
        granted_at=_timestamp(row.granted_at),
        expires_at=_timestamp(row.expires_at),
    )


def _assignment_pb(row: store.RoleAssignmentRow) -> pb.RoleAssignment:
    return pb.RoleAssignment(
        assignment_id=row.assignment_id,
        subject=row.subject,
        role=row.role,
        organization_id=row.organization_id,
        assigned_by=row.assigned_by,
        assigned_at=_timestamp(row.assigned_at),
    )


def _parse_recorded_at(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.UTC
        )
    )
    return stamp


def audit_record_pb(row: store.AuditRecordRow) -> pb.AuditRecord:
    """Convert a stored audit record to its message."""
    return pb.AuditRecord(
        audit_id=row.audit_id,
        sequence=row.sequence,
        recorded_at=_parse_recorded_at(row.recorded_at),
        subject=row.subject,
        subject_kind=_SUBJECT_KIND_NUMBERS.get(row.subject_kind, 0),  # type: ignore[arg-type]
        roles=[r for r in row.roles.split(",") if r],
        organization_id=row.organization_id,
        calling_service=row.calling_service,
        method=row.method,
        action=row.action,
        patient_id=row.patient_id,
        purpose=row.purpose,  # type: ignore[arg-type]
        decision=_DECISIONS.get(row.decision, 0),  # type: ignore[arg-type]
        reason=row.reason,
        emergency=row.emergency,
        redact_clinical=row.redact_clinical,
        trace_id=row.trace_id,
        status_code=row.status_code,
        hash=row.hash,
        previous_hash=row.previous_hash,
    )


def _disclosure_pb(row: store.AuditRecordRow) -> pb.Disclosure:
    return pb.Disclosure(
        audit_id=row.audit_id,
        disclosed_at=_parse_recorded_at(row.recorded_at),
        subject=row.subject,
        roles=[r for r in row.roles.split(",") if r],
        organization_id=row.organization_id,
        action=row.action,
        purpose=row.purpose,  # type: ignore[arg-type]
        emergency=row.emergency,
        trace_id=row.trace_id,
    )
