"""Tables of the authz context and the queries on them.

Every function takes the session of the caller's transaction; the servicer
and the event handlers own the transactions. Times are stored in UTC.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import uuid_utils
from sqlalchemy import BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlalchemy import DateTime as SaDateTime
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select

from mesh.runtime.audit_chain import (
    CHAINED_FIELDS,
    GENESIS_HASH,
    ChainReport,
    record_hash,
    verify_chain,
)
from mesh.runtime.events import add_event_tables

UTC = datetime.UTC

#: How long a care relationship stays open after the appointment completed or
#: the patient was discharged, so that follow-up (results, letters, the bill's
#: questions) needs no break-the-glass. Cancelled and no-show appointments
#: close it at once.
RELATIONSHIP_RETENTION = datetime.timedelta(days=30)
#: How long a lab order links the ordering clinician and the performing lab to
#: the patient after it was placed; no event closes it earlier.
LAB_ORDER_WINDOW = datetime.timedelta(days=30)

#: Primary key of the single chain head row.
HEAD_ID = 1


class AuthzBase(SQLModel, registry=registry()):
    """Declarative base of the authz tables, apart from other services'."""


def _utc_column(nullable: bool = False) -> Column[datetime.datetime]:
    return Column(SaDateTime(timezone=True), nullable=nullable)


class PatientSnapshotRow(AuthzBase, table=True):
    """Patient as far as access decisions need it, from records' events."""

    __tablename__ = "patient_snapshots"

    patient_id: str = Field(primary_key=True, max_length=64)
    managing_organization_id: str = Field(default="", max_length=64)
    #: Surviving patient id once this record was merged into another.
    merged_into: str | None = Field(default=None, max_length=64)
    version: int = Field(default=0)
    updated_at: datetime.datetime = Field(sa_column=_utc_column())


class CareRelationshipRow(AuthzBase, table=True):
    """Link between a practitioner and a patient opened by a care event."""

    __tablename__ = "care_relationships"
    __table_args__ = (
        Index("ix_care_relationships_patient", "patient_id", "practitioner_id"),
    )

    #: "<kind>:<source id>:<practitioner id>", so redelivery updates one row.
    relationship_id: str = Field(primary_key=True, max_length=255)
    patient_id: str = Field(max_length=64)
    practitioner_id: str = Field(default="", max_length=64)
    organization_id: str = Field(default="", max_length=64)
    #: "appointment", "admission" or "lab_order".
    kind: str = Field(max_length=16)
    source_id: str = Field(max_length=64, index=True)
    opened_at: datetime.datetime = Field(sa_column=_utc_column())
    #: End of the relationship; NULL while it is open without an end.
    closes_at: datetime.datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )


class ConsentRow(AuthzBase, table=True):
    """Patient's consent to share data with an organization or for purposes."""

    __tablename__ = "consents"

    consent_id: str = Field(primary_key=True, max_length=36)
    patient_id: str = Field(max_length=64, index=True)
    grantee_organization_id: str = Field(default="", max_length=64)
    #: Purpose enum numbers, comma separated; empty means any but research.
    purposes: str = Field(default="", max_length=64)
    granted_by: str = Field(default="", max_length=255)
    granted_at: datetime.datetime = Field(sa_column=_utc_column())
    expires_at: datetime.datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )
    revoked_at: datetime.datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )


class BreakGlassGrantRow(AuthzBase, table=True):
    """Time-limited emergency access of one person to one patient."""

    __tablename__ = "break_glass_grants"
    __table_args__ = (Index("ix_break_glass_patient", "patient_id", "subject"),)

    grant_id: str = Field(primary_key=True, max_length=36)
    patient_id: str = Field(max_length=64)
    subject: str = Field(max_length=255)
    practitioner_id: str = Field(default="", max_length=64)
    organization_id: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=1000)
    granted_at: datetime.datetime = Field(sa_column=_utc_column())
    expires_at: datetime.datetime = Field(sa_column=_utc_column())


class RoleAssignmentRow(AuthzBase, table=True):
    """Role given to a person in an organization through AssignRole."""

    __tablename__ = "role_assignments"
    __table_args__ = (
        UniqueConstraint(
            "subject", "role", "organization_id", name="uq_role_assignments"
        ),
    )

    assignment_id: str = Field(primary_key=True, max_length=36)
    subject: str = Field(max_length=255)
    role: str = Field(max_length=32)
    organization_id: str = Field(default="", max_length=64)
    assigned_by: str = Field(default="", max_length=255)
    assigned_at: datetime.datetime = Field(sa_column=_utc_column())


class AuditRecordRow(AuthzBase, table=True):
    """One record of the append-only, hash-chained audit trail."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_patient", "patient_id", "sequence"),)

    sequence: int = Field(
        sa_column=Column(BigInteger, primary_key=True, autoincrement=False)
    )
    audit_id: str = Field(max_length=36, unique=True)
    #: RFC 3339 UTC time with microseconds, kept as text so that the hashed
    #: value reads back byte for byte on every database.
    recorded_at: str = Field(max_length=32)
    subject: str = Field(default="", max_length=255)
    #: "person", "service" or "anonymous".
    subject_kind: str = Field(default="", max_length=16)
    #: Sorted role names, comma separated.
    roles: str = Field(default="", max_length=255)
    organization_id: str = Field(default="", max_length=64)
    calling_service: str = Field(default="", max_length=64)
    method: str = Field(default="", max_length=255)
    action: str = Field(default="", max_length=128)
    patient_id: str = Field(default="", max_length=64)
    purpose: int = Field(default=0)
    #: "ALLOW", "DENY" or "NOT_DECIDED".
    decision: str = Field(max_length=16)
    reason_code: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=1000)
    emergency: bool = Field(default=False)
    redact_clinical: bool = Field(default=False)
    trace_id: str = Field(default="", max_length=32, index=True)
    status_code: str = Field(default="", max_length=32)
    previous_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHeadRow(AuthzBase, table=True):
    """Last sequence and hash of the chain; also the lock that orders appends."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    last_sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_hash: str = Field(max_length=64)


class IdempotencyRow(AuthzBase, table=True):
    """First response of a retriable write, returned again for its key."""

    __tablename__ = "idempotency_keys"

    #: "<method>:<caller subject>", so two callers' keys never collide.
    scope: str = Field(primary_key=True, max_length=255)
    key: str = Field(primary_key=True, max_length=128)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime.datetime = Field(sa_column=_utc_column())


add_event_tables(AuthzBase.metadata)


def new_id() -> str:
    """Return a new UUIDv7 string."""
    return str(uuid_utils.uuid7())


def as_utc(moment: datetime.datetime) -> datetime.datetime:
    """Return ``moment`` in UTC; SQLite hands back naive UTC datetimes."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime.datetime) -> str:
    """Format as RFC 3339 UTC with microseconds, the audit trail's time form."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Patients ---------------------------------------------------------------


def resolve_patient(session: Session, patient_id: str) -> str:
    """Follow merge links to the surviving patient id."""
    seen = {patient_id}
    current = patient_id
    while True:
        row = session.get(PatientSnapshotRow, current)
        if row is None or not row.merged_into or row.merged_into in seen:
            return current
        current = row.merged_into
        seen.add(current)


def get_patient(session: Session, patient_id: str) -> PatientSnapshotRow | None:
    return session.get(PatientSnapshotRow, patient_id)


def upsert_patient(
    session: Session,
    *,
    patient_id: str,
    managing_organization_id: str,
    version: int,
    now: datetime.datetime,
) -> None:
    """Store the patient's snapshot unless a newer version is already stored."""
    row = session.get(PatientSnapshotRow, patient_id)
    if row is None:
        session.add(
            PatientSnapshotRow(
                patient_id=patient_id,
                managing_organization_id=managing_organization_id,
                version=version,
                updated_at=now,
            )
        )
        return
    if version and row.version and version < row.version:
        return
    row.managing_organization_id = managing_organization_id
    row.version = version
    row.updated_at = now
    session.add(row)


def merge_patients(
    session: Session, *, merged_id: str, survivor_id: str, now: datetime.datetime
) -> None:
    """Link the merged record to the survivor and re-key what pointed at it."""
    row = session.get(PatientSnapshotRow, merged_id)
    if row is None:
        row = PatientSnapshotRow(patient_id=merged_id, updated_at=now)
    row.merged_into = survivor_id
    row.updated_at = now
    session.add(row)
    for model in (CareRelationshipRow, ConsentRow, BreakGlassGrantRow):
        rows = session.exec(
            select(model).where(col(model.patient_id) == merged_id)  # type: ignore[attr-defined]
        ).all()
        for item in rows:
            item.patient_id = survivor_id
            session.add(item)


# Care relationships -------------------------------------------------------


def open_relationship(
    session: Session,
    *,
    kind: str,
    source_id: str,
    patient_id: str,
    practitioner_id: str,
    organization_id: str,
    opened_at: datetime.datetime,
    closes_at: datetime.datetime | None,
) -> None:
    """Open or reopen one relationship; a redelivered event rewrites the row."""
    relationship_id = f"{kind}:{source_id}:{practitioner_id}"
    row = session.get(CareRelationshipRow, relationship_id)
    if row is None:
        row = CareRelationshipRow(
            relationship_id=relationship_id,
            kind=kind,
            source_id=source_id,
            patient_id=patient_id,
            opened_at=opened_at,
        )
    row.patient_id = patient_id
    row.practitioner_id = practitioner_id
    row.organization_id = organization_id
    row.closes_at = closes_at
    session.add(row)


def close_relationships(
    session: Session,
    *,
    kind: str,
    source_id: str,
    closes_at: datetime.datetime,
    practitioner_id: str | None = None,
) -> None:
    """Set the end of the relationships opened by one appointment or admission."""
    query = select(CareRelationshipRow).where(
        CareRelationshipRow.kind == kind, CareRelationshipRow.source_id == source_id
    )
    if practitioner_id is not None:
        query = query.where(CareRelationshipRow.practitioner_id == practitioner_id)
    for row in session.exec(query).all():
        row.closes_at = closes_at
        session.add(row)


def has_practitioner_relationship(
    session: Session,
    *,
    patient_id: str,
    practitioner_id: str,
    now: datetime.datetime,
) -> bool:
    """Return True when an appointment or admission links the two now."""
    if not practitioner_id:
        return False
    rows = session.exec(
        select(CareRelationshipRow).where(
            CareRelationshipRow.patient_id == patient_id,
            CareRelationshipRow.practitioner_id == practitioner_id,
        )
    ).all()
    return any(_is_open(row, now) for row in rows)


def has_lab_order_at(
    session: Session,
    *,
    patient_id: str,
    organization_id: str,
    now: datetime.datetime,
) -> bool:
    """Return True when an open lab order for the patient is at the organization."""
    rows = session.exec(
        select(CareRelationshipRow).where(
            CareRelationshipRow.patient_id == patient_id,
            CareRelationshipRow.kind == "lab_order",
            CareRelationshipRow.organization_id == organization_id,
        )
    ).all()
    return any(_is_open(row, now) for row in rows)


def _is_open(row: CareRelationshipRow, now: datetime.datetime) -> bool:
    return row.closes_at is None or as_utc(row.closes_at) > now


# Consents -----------------------------------------------------------------


def add_consent(session: Session, row: ConsentRow) -> None:
    session.add(row)


def get_consent(session: Session, consent_id: str) -> ConsentRow | None:
    return session.get(ConsentRow, consent_id)


def list_consents(
    session: Session, patient_id: str, *, offset: int, limit: int
) -> list[ConsentRow]:
    """Return a patient's consents, newest first."""
    return list(
        session.exec(
            select(ConsentRow)
            .where(ConsentRow.patient_id == patient_id)
            .order_by(col(ConsentRow.granted_at).desc(), col(ConsentRow.consent_id))
            .offset(offset)
            .limit(limit)
        ).all()
    )


def active_consents(
    session: Session, patient_id: str, now: datetime.datetime
) -> tuple[tuple[str, frozenset[int]], ...]:
    """Return (grantee organization, purposes) of each consent in force now."""
    rows = session.exec(
        select(ConsentRow).where(
            ConsentRow.patient_id == patient_id, col(ConsentRow.revoked_at).is_(None)
        )
    ).all()
    return tuple(
        (row.grantee_organization_id, parse_purposes(row.purposes))
        for row in rows
        if row.expires_at is None or as_utc(row.expires_at) > now
    )


def parse_purposes(text: str) -> frozenset[int]:
    return frozenset(int(item) for item in text.split(",") if item)


def format_purposes(purposes: Sequence[int]) -> str:
    return ",".join(str(p) for p in sorted(set(purposes)))


# Break the glass ----------------------------------------------------------


def add_grant(session: Session, row: BreakGlassGrantRow) -> None:
    session.add(row)


def has_active_grant(
    session: Session, *, patient_id: str, subject: str, now: datetime.datetime
) -> bool:
    """Return True when the person has a break-the-glass grant open now."""
    rows = session.exec(
        select(BreakGlassGrantRow).where(
            BreakGlassGrantRow.patient_id == patient_id,
            BreakGlassGrantRow.subject == subject,
        )
    ).all()
    return any(as_utc(row.granted_at) <= now < as_utc(row.expires_at) for row in rows)


# Roles --------------------------------------------------------------------


def assigned_roles(
    session: Session, *, subject: str, organization_id: str
) -> frozenset[str]:
    rows = session.exec(
        select(RoleAssignmentRow.role).where(
            RoleAssignmentRow.subject == subject,
            RoleAssignmentRow.organization_id == organization_id,
        )
    ).all()
    return frozenset(rows)


def find_assignment(
    session: Session, *, subject: str, role: str, organization_id: str
) -> RoleAssignmentRow | None:
    return session.exec(
        select(RoleAssignmentRow).where(
            RoleAssignmentRow.subject == subject,
            RoleAssignmentRow.role == role,
            RoleAssignmentRow.organization_id == organization_id,
        )
    ).first()


# Idempotency --------------------------------------------------------------


def stored_response(session: Session, scope: str, key: str) -> bytes | None:
    row = session.get(IdempotencyRow, (scope, key))
    return None if row is None else row.response


def store_response(
    session: Session, scope: str, key: str, response: bytes, now: datetime.datetime
) -> None:
    session.add(IdempotencyRow(scope=scope, key=key, response=response, created_at=now))


# Audit trail --------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """Fields of an audit record before it is placed in the chain."""

    subject: str
    subject_kind: str
    roles: str
    organization_id: str
    calling_service: str
    method: str
    action: str
    patient_id: str
    purpose: int
    decision: str
    reason_code: str
    reason: str
    emergency: bool
    redact_clinical: bool
    trace_id: str
    status_code: str


def append_audit(
    session: Session, entry: AuditEntry, now: datetime.datetime
) -> AuditRecordRow:
    """Append ``entry`` at the end of the chain in the caller's transaction.

    The head row is read with SELECT ... FOR UPDATE, which on PostgreSQL makes
    concurrent appends wait for each other; SQLite transactions here begin
    with BEGIN IMMEDIATE and are serialized already. Either way every append
    reads the previous one's head, so the chain stays linear.
    """
    head = session.exec(
        select(AuditHeadRow).where(AuditHeadRow.id == HEAD_ID).with_for_update()
    ).first()
    if head is None:
        head = AuditHeadRow(id=HEAD_ID, last_sequence=0, last_hash=GENESIS_HASH)
    fields: dict[str, object] = {
        "sequence": head.last_sequence + 1,
        "audit_id": new_id(),
        "recorded_at": format_time(now),
        **entry.__dict__,
        "previous_hash": head.last_hash,
    }
    fields["hash"] = record_hash(fields)
    row = AuditRecordRow(**fields)  # type: ignore[arg-type]
    session.add(row)
    head.last_sequence = row.sequence
    head.last_hash = row.hash
    session.add(head)
    session.flush()
    return row


def list_patient_audit(
    session: Session,
    patient_id: str,
    *,
    before_sequence: int,
    limit: int,
    allowed_only: bool = False,
    since: str = "",
    exclude_patient_role: bool = False,
) -> list[AuditRecordRow]:
    """Return a patient's audit records, newest first, below ``before_sequence``.

    ``exclude_patient_role`` leaves out records of callers whose only role is
    patient: the rules let such a caller reach only their own record, so those
    records are the patient's own reads, not disclosures.
    """
    query = select(AuditRecordRow).where(AuditRecordRow.patient_id == patient_id)
    if before_sequence:
        query = query.where(col(AuditRecordRow.sequence) < before_sequence)
    if allowed_only:
        query = query.where(AuditRecordRow.decision == "ALLOW")
    if since:
        query = query.where(col(AuditRecordRow.recorded_at) >= since)
    if exclude_patient_role:
        query = query.where(AuditRecordRow.roles != "patient")
    query = query.order_by(col(AuditRecordRow.sequence).desc()).limit(limit)
    return list(session.exec(query).all())


def iter_audit_fields(
    session: Session, batch: int = 1000
) -> Iterator[dict[str, object]]:
    """Yield every audit record's chained fields and hash, by sequence."""
    last = 0
    while True:
        rows = session.exec(
            select(AuditRecordRow)
            .where(col(AuditRecordRow.sequence) > last)
            .order_by(col(AuditRecordRow.sequence))
            .limit(batch)
        ).all()
        if not rows:
            return
        for row in rows:
            fields: dict[str, object] = {
                name: getattr(row, name) for name in CHAINED_FIELDS
            }
            fields["hash"] = row.hash
            yield fields
        last = rows[-1].sequence


def verify_audit(session: Session) -> ChainReport:
    """Verify the whole chain against its head."""
    head = session.get(AuditHeadRow, HEAD_ID)
    return verify_chain(
        iter_audit_fields(session),
        head_sequence=head.last_sequence if head else 0,
        head_hash=head.last_hash if head else GENESIS_HASH,
    )
