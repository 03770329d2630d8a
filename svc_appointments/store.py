"""Tables of the scheduling context and the queries on them.

Every function takes the session of the caller's transaction. Times are
stored as UTC: ``UtcDateTime`` writes naive UTC on SQLite (which has no time
zone type) and ``timestamptz`` on PostgreSQL, and always reads back aware
UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, func, select

from mesh.runtime.events.tables import add_event_tables
from svc_appointments.domain import (
    ACTIVE_STATUSES,
    AdmissionStatus,
    AppointmentStatus,
    Interval,
)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamp stored as UTC and read back as an aware UTC datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; give UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class AppointmentsBase(SQLModel, registry=registry()):
    pass


def _time(nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


def _json() -> Any:
    return Field(sa_column=Column(JSON, nullable=False))


class OrganizationRow(AppointmentsBase, table=True):
    __tablename__ = "organizations"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=255)
    time_zone: str = Field(max_length=64)
    identifiers: list[dict[str, str]] = _json()
    created_at: datetime = _time()


class LocationRow(AppointmentsBase, table=True):
    __tablename__ = "locations"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=255)
    organization_id: str = Field(default="", max_length=64)
    identifiers: list[dict[str, str]] = _json()
    created_at: datetime = _time()


class PractitionerRow(AppointmentsBase, table=True):
    """A practitioner; Book locks this row so bookings of one practitioner
    run one after another on PostgreSQL."""

    __tablename__ = "practitioners"

    id: str = Field(primary_key=True, max_length=64)
    identifiers: list[dict[str, str]] = _json()
    names: list[dict[str, Any]] = _json()
    organization_id: str = Field(default="", max_length=64, index=True)
    specialty: dict[str, str] = _json()
    active: bool = True
    version: int = 1
    created_at: datetime = _time()


class IdentifierRow(AppointmentsBase, table=True):
    """Identifier -> the one resource holding it (practitioner, organization,
    location); the primary key makes an identifier unique per resource type."""

    __tablename__ = "identifiers"

    resource_type: str = Field(primary_key=True, max_length=32)
    system: str = Field(primary_key=True, max_length=255)
    value: str = Field(primary_key=True, max_length=255)
    resource_id: str = Field(max_length=64)


class FhirSourceRow(AppointmentsBase, table=True):
    """FHIR resource already imported, by type and source id."""

    __tablename__ = "fhir_sources"

    resource_type: str = Field(primary_key=True, max_length=32)
    source_id: str = Field(primary_key=True, max_length=128)
    assigned_id: str = Field(max_length=64)
    imported_at: datetime = _time()


class ScheduleRow(AppointmentsBase, table=True):
    __tablename__ = "schedules"

    practitioner_id: str = Field(primary_key=True, max_length=64)
    organization_id: str = Field(default="", max_length=64)
    location_id: str = Field(default="", max_length=64)
    time_zone: str = Field(max_length=64)
    #: [{"weekday": 1, "start": "09:00", "end": "13:00", "slot_minutes": 15}]
    rules: list[dict[str, Any]] = _json()
    version: int = 1
    updated_at: datetime = _time()


class ScheduleExceptionRow(AppointmentsBase, table=True):
    __tablename__ = "schedule_exceptions"
    __table_args__ = (Index("ix_schedule_exceptions_practitioner", "practitioner_id"),)

    id: str = Field(primary_key=True, max_length=64)
    practitioner_id: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    start_at: datetime = _time()
    end_at: datetime = _time()
    reason: str = Field(default="", max_length=1000)
    #: Id shared by the exceptions of one organization-wide holiday.
    holiday_id: str = Field(default="", max_length=64, index=True)
    #: Appointments the exception moved or cancelled when it was added.
    rescheduled_ids: list[str] = _json()
    cancelled_ids: list[str] = _json()
    created_at: datetime = _time()


class AppointmentRow(AppointmentsBase, table=True):
    __tablename__ = "appointments"
    __table_args__ = (
        Index("ix_appointments_practitioner_start", "practitioner_id", "start_at"),
        Index("ix_appointments_patient_start", "patient_id", "start_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    practitioner_id: str = Field(default="", max_length=64)
    organization_id: str = Field(default="", max_length=64)
    location_id: str = Field(default="", max_length=64)
    start_at: datetime = _time()
    end_at: datetime = _time()
    service_type_system: str = Field(default="", max_length=255)
    service_type_code: str = Field(default="", max_length=64)
    service_type_display: str = Field(default="", max_length=255)
    reason: str = Field(default="", max_length=1000)
    status: str = Field(max_length=16)
    version: int = 1
    checked_in_at: datetime | None = _time(nullable=True)
    completed_at: datetime | None = _time(nullable=True)
    encounter_id: str = Field(default="", max_length=64)
    cancelled_by: str = Field(default="", max_length=32)
    cancellation_reason: str = Field(default="", max_length=1000)
    imported: bool = False
    created_at: datetime = _time()
    updated_at: datetime = _time()

    @property
    def period(self) -> Interval:
        return Interval(self.start_at, self.end_at)


class AdmissionRow(AppointmentsBase, table=True):
    __tablename__ = "admissions"
    __table_args__ = (Index("ix_admissions_patient", "patient_id"),)

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    organization_id: str = Field(default="", max_length=64)
    ward: str = Field(default="", max_length=255)
    emergency: bool = False
    attending_practitioner_id: str = Field(default="", max_length=64)
    care_team_practitioner_ids: list[str] = _json()
    appointment_id: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=1000)
    status: str = Field(max_length=16)
    admitted_at: datetime = _time()
    discharged_at: datetime | None = _time(nullable=True)
    version: int = 1


class PatientSnapshotRow(AppointmentsBase, table=True):
    """Scheduling's copy of one patient, without names or birth dates.

    ``merged_into`` is the surviving patient id once records merged this one.
    """

    __tablename__ = "patients"

    patient_id: str = Field(primary_key=True, max_length=64)
    version: int = 0
    deceased: bool = False
    managing_organization_id: str = Field(default="", max_length=64)
    merged_into: str = Field(default="", max_length=64)
    updated_at: datetime = _time()


class IdempotencyRow(AppointmentsBase, table=True):
    """First result of a retriable write, by operation and idempotency key."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("operation", "key", name="uq_idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    operation: str = Field(sa_column=Column(String(64), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    request_hash: str = Field(max_length=64)
    result_id: str = Field(max_length=64)
    created_at: datetime = _time()


add_event_tables(AppointmentsBase.metadata)
metadata = AppointmentsBase.metadata


# --- practitioners, organizations, identifiers -----------------------------


def lock_practitioner(session: Session, practitioner_id: str) -> PractitionerRow | None:
    """Load a practitioner and lock its row until the transaction ends.

    Every write that changes a practitioner's booked time (Book, Reschedule,
    schedule changes) takes this lock first, so on PostgreSQL the overlap
    check and the insert that follows run one transaction at a time per
    practitioner. On SQLite BEGIN IMMEDIATE already serializes writers and
    FOR UPDATE is omitted by the dialect.
    """
    statement = (
        select(PractitionerRow)
        .where(PractitionerRow.id == practitioner_id)
        .with_for_update()
    )
    return session.exec(statement).first()


def find_by_identifier(
    session: Session, resource_type: str, system: str, value: str
) -> str | None:
    """Return the id of the resource holding an identifier, if any."""
    row = session.get(IdentifierRow, (resource_type, system, value))
    return row.resource_id if row is not None else None


def add_identifiers(
    session: Session,
    resource_type: str,
    resource_id: str,
    identifiers: Sequence[dict[str, str]],
) -> None:
    for identifier in identifiers:
        session.add(
            IdentifierRow(
                resource_type=resource_type,
                system=identifier["system"],
                value=identifier["value"],
                resource_id=resource_id,
            )
        )


#: Values per IN list; SQLite allows 32766 bound parameters since 3.32.
_IN_CHUNK = 500


def imported_sources(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Return the assigned ids of already imported (type, source id) keys."""
    wanted = set(keys)
    source_ids = sorted({source_id for _, source_id in wanted})
    found: dict[tuple[str, str], str] = {}
    for start in range(0, len(source_ids), _IN_CHUNK):
        statement = select(FhirSourceRow).where(
            col(FhirSourceRow.source_id).in_(source_ids[start : start + _IN_CHUNK])
        )
        for row in session.exec(statement):
            key = (row.resource_type, row.source_id)
            if key in wanted:
                found[key] = row.assigned_id
    return found


def identifier_holders(
    session: Session, keys: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], str]:
    """Return the holders of (resource type, system, value) identifiers."""
    wanted = set(keys)
    values = sorted({value for _, _, value in wanted})
    found: dict[tuple[str, str, str], str] = {}
    for start in range(0, len(values), _IN_CHUNK):
        statement = select(IdentifierRow).where(
            col(IdentifierRow.value).in_(values[start : start + _IN_CHUNK])
        )
        for row in session.exec(statement):
            key = (row.resource_type, row.system, row.value)
            if key in wanted:
                found[key] = row.resource_id
    return found


def list_practitioners(
    session: Session,
    *,
    organization_id: str,
    offset: int,
    limit: int,
) -> tuple[list[PractitionerRow], int]:
    """Return one page of practitioners ordered by id, and the total count."""
    query = select(PractitionerRow)
    count = select(func.count()).select_from(PractitionerRow)
    if organization_id:
        query = query.where(PractitionerRow.organization_id == organization_id)
        count = count.where(PractitionerRow.organization_id == organization_id)
    rows = session.exec(
        query.order_by(col(PractitionerRow.id)).offset(offset).limit(limit)
    ).all()
    return list(rows), int(session.exec(count).one())


# --- schedules and appointments --------------------------------------------


def exceptions_overlapping(
    session: Session, practitioner_id: str, window: Interval
) -> list[ScheduleExceptionRow]:
    statement = select(ScheduleExceptionRow).where(
        ScheduleExceptionRow.practitioner_id == practitioner_id,
        col(ScheduleExceptionRow.start_at) < window.end,
        col(ScheduleExceptionRow.end_at) > window.start,
    )
    return list(session.exec(statement.order_by(col(ScheduleExceptionRow.start_at))))


def schedules_of_organization(
    session: Session, organization_id: str
) -> list[ScheduleRow]:
    """Return the organization's schedules ordered by practitioner id."""
    statement = (
        select(ScheduleRow)
        .where(ScheduleRow.organization_id == organization_id)
        .order_by(col(ScheduleRow.practitioner_id))
    )
    return list(session.exec(statement))


def exceptions_of_holiday(
    session: Session, holiday_id: str
) -> list[ScheduleExceptionRow]:
    statement = (
        select(ScheduleExceptionRow)
        .where(ScheduleExceptionRow.holiday_id == holiday_id)
        .order_by(col(ScheduleExceptionRow.practitioner_id))
    )
    return list(session.exec(statement))


def active_appointments(
    session: Session,
    practitioner_id: str,
    window: Interval,
    *,
    exclude_id: str = "",
) -> list[AppointmentRow]:
    """Return the practitioner's booked or checked-in appointments in a window."""
    statement = select(AppointmentRow).where(
        AppointmentRow.practitioner_id == practitioner_id,
        col(AppointmentRow.status).in_([str(s) for s in ACTIVE_STATUSES]),
        col(AppointmentRow.start_at) < window.end,
        col(AppointmentRow.end_at) > window.start,
    )
    if exclude_id:
        statement = statement.where(AppointmentRow.id != exclude_id)
    return list(session.exec(statement.order_by(col(AppointmentRow.start_at))))


def patient_appointments_overlapping(
    session: Session, patient_id: str, window: Interval, *, exclude_id: str = ""
) -> list[AppointmentRow]:
    statement = select(AppointmentRow).where(
        AppointmentRow.patient_id == patient_id,
        col(AppointmentRow.status).in_([str(s) for s in ACTIVE_STATUSES]),
        col(AppointmentRow.start_at) < window.end,
        col(AppointmentRow.end_at) > window.start,
    )
    if exclude_id:
        statement = statement.where(AppointmentRow.id != exclude_id)
    return list(session.exec(statement))


def future_booked_appointments(
    session: Session, patient_id: str, now: datetime
) -> list[AppointmentRow]:
    """Return the patient's booked appointments that start at ``now`` or later."""
    statement = (
        select(AppointmentRow)
        .where(
            AppointmentRow.patient_id == patient_id,
            AppointmentRow.status == str(AppointmentStatus.BOOKED),
            col(AppointmentRow.start_at) >= now,
        )
        .order_by(col(AppointmentRow.start_at))
        .with_for_update()
    )
    return list(session.exec(statement))


def lock_appointment(session: Session, appointment_id: str) -> AppointmentRow | None:
    statement = (
        select(AppointmentRow)
        .where(AppointmentRow.id == appointment_id)
        .with_for_update()
    )
    return session.exec(statement).first()


def list_appointments(
    session: Session,
    *,
    patient_id: str,
    practitioner_id: str,
    window: Interval | None,
    offset: int,
    limit: int,
) -> tuple[list[AppointmentRow], int]:
    """Return one page of appointments ordered by start time, and the total."""
    conditions: list[Any] = []
    if patient_id:
        conditions.append(AppointmentRow.patient_id == patient_id)
    if practitioner_id:
        conditions.append(AppointmentRow.practitioner_id == practitioner_id)
    if window is not None:
        conditions.append(col(AppointmentRow.start_at) < window.end)
        conditions.append(col(AppointmentRow.end_at) > window.start)
    query = select(AppointmentRow).where(*conditions)
    rows = session.exec(
        query.order_by(col(AppointmentRow.start_at), col(AppointmentRow.id))
        .offset(offset)
        .limit(limit)
    ).all()
    count = select(func.count()).select_from(AppointmentRow).where(*conditions)
    return list(rows), int(session.exec(count).one())


def lock_admission(session: Session, admission_id: str) -> AdmissionRow | None:
    statement = (
        select(AdmissionRow).where(AdmissionRow.id == admission_id).with_for_update()
    )
    return session.exec(statement).first()


def open_admission(session: Session, patient_id: str) -> AdmissionRow | None:
    """Return the patient's admission that has not been discharged, if any."""
    statement = select(AdmissionRow).where(
        AdmissionRow.patient_id == patient_id,
        AdmissionRow.status == str(AdmissionStatus.ADMITTED),
    )
    return session.exec(statement).first()


# --- idempotency -----------------------------------------------------------


def find_idempotent_result(
    session: Session, operation: str, key: str
) -> IdempotencyRow | None:
    statement = select(IdempotencyRow).where(
        IdempotencyRow.operation == operation, IdempotencyRow.key == key
    )
    return session.exec(statement).first()


def remember_idempotent_result(
    session: Session,
    *,
    operation: str,
    key: str,
    request_hash: str,
    result_id: str,
    now: datetime,
) -> None:
    session.add(
        IdempotencyRow(
            operation=operation,
            key=key,
            request_hash=request_hash,
            result_id=result_id,
            created_at=now,
        )
    )
