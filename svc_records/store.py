"""Tables of the records context and the queries on them.

Every function takes the session of the caller's transaction; the servicer
and the event handlers own the transactions.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlalchemy import DateTime as SaDateTime
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, func, select

from mesh.runtime.events import add_event_tables


class RecordsBase(SQLModel, registry=registry()):
    """Declarative base of the records tables, apart from other services'."""


def _utc_column(nullable: bool = False) -> Column[datetime.datetime]:
    return Column(SaDateTime(timezone=True), nullable=nullable)


class PatientRow(RecordsBase, table=True):
    """One patient record; demographics as JSON, search keys as columns."""

    __tablename__ = "patients"

    patient_id: str = Field(primary_key=True, max_length=36)
    version: int = Field(default=1)
    #: "active", or "merged" when merged into ``merged_into``.
    status: str = Field(default="active", max_length=16, index=True)
    merged_into: str | None = Field(default=None, max_length=36)
    #: ISO date "YYYY-MM-DD", empty when unknown.
    birth_date: str = Field(default="", max_length=10, index=True)
    #: hin.common.v1.Gender value name, for example "GENDER_FEMALE".
    gender: str = Field(default="", max_length=24)
    deceased: bool = Field(default=False)
    managing_organization_id: str = Field(default="", max_length=64)
    #: hin.records.v1.PatientDemographics serialized by protobuf.
    demographics: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: Normalized name words of every name, space separated and padded with a
    #: space on both sides so that " word" finds a word start.
    search_names: str = Field(default="", sa_column=Column(Text, nullable=False))
    #: Digits of every phone number, space separated and padded likewise.
    search_phones: str = Field(default="", sa_column=Column(Text, nullable=False))
    #: Source FHIR Patient JSON (references rewritten), kept so that its
    #: extensions and other elements are exported back; empty if not imported.
    fhir_json: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime.datetime = Field(sa_column=_utc_column())
    updated_at: datetime.datetime = Field(sa_column=_utc_column())


class PatientIdentifierRow(RecordsBase, table=True):
    """Identifier held by a patient; the primary key makes it unique."""

    __tablename__ = "patient_identifiers"

    system: str = Field(primary_key=True, max_length=255)
    value: str = Field(primary_key=True, max_length=255)
    patient_id: str = Field(max_length=36, index=True)


class ClinicalEntryRow(RecordsBase, table=True):
    """One entry of a patient's chart: encounter, condition, allergy, ..."""

    __tablename__ = "clinical_entries"
    __table_args__ = (
        UniqueConstraint("kind", "source_key", name="uq_clinical_entries_source"),
        Index("ix_clinical_entries_patient", "patient_id", "kind"),
    )

    entry_id: str = Field(primary_key=True, max_length=36)
    patient_id: str = Field(max_length=36)
    #: "encounter", "condition", "allergy", "medication" or "observation".
    kind: str = Field(max_length=16)
    #: Key that makes a repeated import or event a duplicate: the FHIR
    #: resource id, the lab result id, or the appointment's encounter id.
    source_key: str | None = Field(default=None, max_length=255)
    #: hin.records.v1 message of the kind (Encounter, Condition, ...).
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: Source FHIR resource JSON with references rewritten to HIN ids.
    fhir_json: str = Field(default="", sa_column=Column(Text, nullable=False))
    #: Clinically relevant time, for ordering the chart; NULL when unknown.
    occurred_at: datetime.datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )
    version: int = Field(default=1)
    created_at: datetime.datetime = Field(sa_column=_utc_column())


class DirectoryEntryRow(RecordsBase, table=True):
    """Practitioner or Organization known to records, for FHIR references."""

    __tablename__ = "directory_entries"
    __table_args__ = (
        UniqueConstraint(
            "resource_type",
            "identifier_system",
            "identifier_value",
            name="uq_directory_entries_identifier",
        ),
    )

    entry_id: str = Field(primary_key=True, max_length=36)
    #: "Practitioner" or "Organization".
    resource_type: str = Field(max_length=32)
    identifier_system: str = Field(max_length=255)
    identifier_value: str = Field(max_length=255)
    fhir_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime.datetime = Field(sa_column=_utc_column())


class IdempotencyRow(RecordsBase, table=True):
    """First response of a retriable write, returned again on a retry."""

    __tablename__ = "idempotency_keys"

    method: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime.datetime = Field(sa_column=_utc_column())


add_event_tables(RecordsBase.metadata)


# Patients ---------------------------------------------------------------


def get_patient(session: Session, patient_id: str) -> PatientRow | None:
    """Load one patient row, merged or not."""
    return session.get(PatientRow, patient_id)


def get_patient_for_update(session: Session, patient_id: str) -> PatientRow | None:
    """Load one patient row and lock it until the transaction ends.

    SQLite ignores the lock; its BEGIN IMMEDIATE already serializes writers.
    """
    statement = (
        select(PatientRow).where(PatientRow.patient_id == patient_id).with_for_update()
    )
    return session.exec(statement).first()


def find_identifier_holders(
    session: Session, identifiers: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Map each (system, value) assigned to a patient to that patient's id."""
    holders: dict[tuple[str, str], str] = {}
    for system, value in identifiers:
        row = session.get(PatientIdentifierRow, (system, value))
        if row is not None:
            holders[(system, value)] = row.patient_id
    return holders


def replace_identifiers(
    session: Session, patient_id: str, identifiers: Iterable[tuple[str, str]]
) -> None:
    """Make ``identifiers`` the exact identifier set of ``patient_id``."""
    target = set(identifiers)
    current = session.exec(
        select(PatientIdentifierRow).where(
            PatientIdentifierRow.patient_id == patient_id
        )
    ).all()
    for row in current:
        if (row.system, row.value) not in target:
            session.delete(row)
    existing = {(row.system, row.value) for row in current}
    for system, value in sorted(target - existing):
        session.add(
            PatientIdentifierRow(system=system, value=value, patient_id=patient_id)
        )
    session.flush()


def patients_born_on(session: Session, birth_date: str) -> Sequence[PatientRow]:
    """Return the active patients with ``birth_date`` (ISO), for matching."""
    return session.exec(
        select(PatientRow).where(
            PatientRow.birth_date == birth_date, PatientRow.status == "active"
        )
    ).all()


def search_patients(
    session: Session,
    *,
    patient_ids: Sequence[str] | None,
    name_words: Sequence[str],
    birth_date: str,
    phone_digits: str,
    offset: int,
    limit: int,
) -> tuple[list[PatientRow], int]:
    """Return one page of active patients matching every criterion, and the total.

    A name word matches the start of a stored name word; a phone matches when
    the stored number ends with the given digits.
    """
    statement = select(PatientRow).where(PatientRow.status == "active")
    if patient_ids is not None:
        statement = statement.where(col(PatientRow.patient_id).in_(patient_ids))
    for word in name_words:
        statement = statement.where(
            col(PatientRow.search_names).contains(" " + word, autoescape=True)
        )
    if birth_date:
        statement = statement.where(PatientRow.birth_date == birth_date)
    if phone_digits:
        statement = statement.where(
            col(PatientRow.search_phones).contains(phone_digits + " ", autoescape=True)
        )
    total = session.exec(select(func.count()).select_from(statement.subquery())).one()
    rows = session.exec(
        statement.order_by(col(PatientRow.created_at), col(PatientRow.patient_id))
        .offset(offset)
        .limit(limit)
    ).all()
    return list(rows), int(total)


# Clinical entries -------------------------------------------------------


def find_entry_by_source(
    session: Session, kind: str, source_key: str
) -> ClinicalEntryRow | None:
    """Return the entry of ``kind`` imported or received under ``source_key``."""
    return session.exec(
        select(ClinicalEntryRow).where(
            ClinicalEntryRow.kind == kind, ClinicalEntryRow.source_key == source_key
        )
    ).first()


def entries_of_patient(session: Session, patient_id: str) -> Sequence[ClinicalEntryRow]:
    """Return every chart entry of one patient, oldest first, undated last."""
    return session.exec(
        select(ClinicalEntryRow)
        .where(ClinicalEntryRow.patient_id == patient_id)
        .order_by(
            col(ClinicalEntryRow.occurred_at).asc().nulls_last(),
            col(ClinicalEntryRow.entry_id),
        )
    ).all()


def move_entries(session: Session, from_patient: str, to_patient: str) -> int:
    """Move every chart entry of ``from_patient`` to ``to_patient``; return count."""
    rows = session.exec(
        select(ClinicalEntryRow).where(ClinicalEntryRow.patient_id == from_patient)
    ).all()
    for row in rows:
        row.patient_id = to_patient
        session.add(row)
    session.flush()
    return len(rows)


# Directory --------------------------------------------------------------


def find_directory_entry(
    session: Session, resource_type: str, system: str, value: str
) -> DirectoryEntryRow | None:
    """Return the Practitioner or Organization with identifier system|value."""
    return session.exec(
        select(DirectoryEntryRow).where(
            DirectoryEntryRow.resource_type == resource_type,
            DirectoryEntryRow.identifier_system == system,
            DirectoryEntryRow.identifier_value == value,
        )
    ).first()


def get_directory_entries(
    session: Session, entry_ids: Iterable[str]
) -> Sequence[DirectoryEntryRow]:
    """Return the directory entries with the given ids."""
    ids = sorted(set(entry_ids))
    if not ids:
        return []
    return session.exec(
        select(DirectoryEntryRow).where(col(DirectoryEntryRow.entry_id).in_(ids))
    ).all()


# Idempotency ------------------------------------------------------------


def load_idempotent_response(session: Session, method: str, key: str) -> bytes | None:
    """Return the stored first response of ``method`` under ``key``, if any."""
    row = session.get(IdempotencyRow, (method, key))
    return None if row is None else row.response


def save_idempotent_response(
    session: Session, method: str, key: str, response: bytes
) -> None:
    """Store the first response of ``method`` under ``key``."""
    session.add(
        IdempotencyRow(
            method=method,
            key=key,
            response=response,
            created_at=datetime.datetime.now(datetime.UTC),
        )
    )
    session.flush()


def merged_patient_ids(session: Session, patient_id: str) -> list[str]:
    """Return the ids of records merged directly into ``patient_id``."""
    return list(
        session.exec(
            select(PatientRow.patient_id)
            .where(PatientRow.merged_into == patient_id)
            .order_by(col(PatientRow.patient_id))
        ).all()
    )
