"""Tables of svc_labs and the queries on them.

Orders and results are stored as their serialized protobuf messages plus the
columns that queries filter and sort on, so the stored form and the contract
cannot drift apart. Every function takes the session of the caller's
transaction.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, LargeBinary, UniqueConstraint, func
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from mesh.runtime.events import add_event_tables

MRN_SYSTEM_PREFIX = "urn:hin:id:mrn:"
NATIONAL_ID_SYSTEM = "urn:hin:id:eg-national-id"


class LabsBase(SQLModel, registry=registry()):
    pass


class PatientRow(LabsBase, table=True):
    """Snapshot of a patient from records events."""

    __tablename__ = "labs_patient"

    patient_id: str = Field(primary_key=True, max_length=64)
    version: int = 0
    #: Survivor's id once this record was merged into another; else "".
    merged_into: str = Field(default="", max_length=64, index=True)
    organization_id: str = Field(default="", max_length=128)
    updated_at: datetime


class PatientIdentifierRow(LabsBase, table=True):
    """One identifier of a patient snapshot."""

    __tablename__ = "labs_patient_identifier"

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(index=True, max_length=64)
    system: str = Field(default="", max_length=255)
    value: str = Field(index=True, max_length=255)
    type_code: str = Field(default="", max_length=32)


class OrderRow(LabsBase, table=True):
    """Laboratory order; ``payload`` is the serialized LabOrder."""

    __tablename__ = "labs_order"

    order_id: str = Field(primary_key=True, max_length=64)
    #: Empty while the order waits in the unmatched worklist.
    patient_id: str = Field(default="", index=True, max_length=64)
    unmatched_id: str = Field(default="", index=True, max_length=64)
    #: Natural key of an order from outside ("hl7:<facility>:<placer>",
    #: "fhir:<source id>"); NULL for orders placed through the API.
    source_key: str | None = Field(default=None, unique=True, max_length=512)
    version: int = 1
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime


class ResultRow(LabsBase, table=True):
    """Newest version of a result; ``payload`` is the serialized TestResult."""

    __tablename__ = "labs_result"

    result_id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(default="", index=True, max_length=64)
    order_id: str = Field(default="", index=True, max_length=64)
    unmatched_id: str = Field(default="", index=True, max_length=64)
    loinc_code: str = Field(default="", index=True, max_length=64)
    #: Natural key of a result from outside, for idempotent imports and for
    #: finding the earlier version a corrected HL7 result replaces.
    source_key: str | None = Field(default=None, unique=True, max_length=512)
    version: int = 1
    critical: bool = False
    historical: bool = False
    #: Sort key of ListResults: effective time, else the time it was stored.
    sort_at: datetime = Field(index=True)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime


class ResultVersionRow(LabsBase, table=True):
    """Every version of a result, including the newest."""

    __tablename__ = "labs_result_version"

    result_id: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    reason: str = ""
    recorded_at: datetime


class AcknowledgementRow(LabsBase, table=True):
    """Acknowledgment of a critical result."""

    __tablename__ = "labs_critical_acknowledgement"

    result_id: str = Field(primary_key=True, max_length=64)
    acknowledged_by: str = Field(max_length=255)
    acknowledged_at: datetime
    note: str = ""


class UnmatchedRow(LabsBase, table=True):
    """Worklist item: one PID group of an HL7 v2 message with no patient."""

    __tablename__ = "labs_unmatched"

    unmatched_id: str = Field(primary_key=True, max_length=64)
    state: int = Field(index=True)
    reason: int
    sending_facility: str = Field(default="", max_length=255)
    control_id: str = Field(default="", max_length=255)
    received_at: datetime = Field(index=True)
    patient_id: str = Field(default="", max_length=64)
    version: int = 1
    #: Serialized UnmatchedResult holding the identifiers.
    identifiers: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class UnmatchedIdentifierRow(LabsBase, table=True):
    """One identifier of a worklist item, for finding items by value."""

    __tablename__ = "labs_unmatched_identifier"

    id: int | None = Field(default=None, primary_key=True)
    unmatched_id: str = Field(index=True, max_length=64)
    value: str = Field(index=True, max_length=255)


class InboundMessageRow(LabsBase, table=True):
    """HL7 v2 message acknowledged by the listener, keyed by facility and MSH-10."""

    __tablename__ = "labs_inbound_message"
    __table_args__ = (UniqueConstraint("sending_facility", "control_id"),)

    id: int | None = Field(default=None, primary_key=True)
    sending_facility: str = Field(max_length=255)
    control_id: str = Field(max_length=255)
    message_type: str = Field(default="", max_length=16)
    ack_code: str = Field(max_length=2)
    #: HL7 table 0357 code and ERR-8 text of an AE or AR; 0 and "" for AA.
    error_code: int = 0
    error_text: str = ""
    received_at: datetime


class IdempotencyRow(LabsBase, table=True):
    """Response of a retriable write, returned again for the same key."""

    __tablename__ = "labs_idempotency"

    key: str = Field(primary_key=True, max_length=512)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime


add_event_tables(LabsBase.metadata)


@dataclass(frozen=True)
class PatientMatch:
    """Outcome of matching identifiers against the patient snapshots."""

    patient_id: str
    reason: pb.UnmatchedReason.ValueType = (
        pb.UnmatchedReason.UNMATCHED_REASON_UNSPECIFIED
    )


def now_utc() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as aware UTC; SQLite returns naive UTC values."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# Patient snapshots -----------------------------------------------------------


def save_patient(
    session: Session,
    snapshot_id: str,
    version: int,
    organization_id: str,
    identifiers: Sequence[types.Identifier],
) -> bool:
    """Insert or replace a snapshot unless a newer version is stored.

    Returns:
        True when the snapshot was written, False when it was older.
    """
    row = session.get(PatientRow, snapshot_id)
    if row is not None and row.version > version:
        return False
    if row is None:
        row = PatientRow(patient_id=snapshot_id, updated_at=now_utc())
    row.version = version
    row.organization_id = organization_id
    row.updated_at = now_utc()
    session.add(row)
    for old in session.exec(
        select(PatientIdentifierRow).where(
            PatientIdentifierRow.patient_id == snapshot_id
        )
    ):
        session.delete(old)
    for identifier in identifiers:
        session.add(
            PatientIdentifierRow(
                patient_id=snapshot_id,
                system=identifier.system,
                value=identifier.value,
                type_code=identifier.type_code.upper(),
            )
        )
    session.flush()
    return True


def mark_merged(session: Session, merged_id: str, survivor_id: str) -> None:
    """Record that ``merged_id`` now resolves to ``survivor_id``."""
    row = session.get(PatientRow, merged_id)
    if row is None:
        row = PatientRow(patient_id=merged_id, updated_at=now_utc())
    row.merged_into = survivor_id
    row.updated_at = now_utc()
    session.add(row)
    for rows in (
        session.exec(select(PatientRow).where(PatientRow.merged_into == merged_id)),
    ):
        for earlier in rows:
            earlier.merged_into = survivor_id
            session.add(earlier)
    session.flush()


def resolve_patient(session: Session, patient_id: str) -> str:
    """Follow merge links to the surviving patient id."""
    seen: set[str] = set()
    current = patient_id
    while current not in seen:
        seen.add(current)
        row = session.get(PatientRow, current)
        if row is None or not row.merged_into:
            return current
        current = row.merged_into
    return current


def is_known_patient(session: Session, patient_id: str) -> bool:
    return session.get(PatientRow, patient_id) is not None


def match_patient(
    session: Session, identifiers: Iterable[types.Identifier]
) -> PatientMatch:
    """Find the one patient the identifiers belong to.

    An identifier with a system matches a snapshot identifier with the same
    system and value. An identifier typed MR (or with no system) also matches
    any hospital's MRN with the same value. Merged ids resolve to their
    survivor. No candidate gives NO_MATCH; more than one gives AMBIGUOUS.
    """
    candidates: set[str] = set()
    for identifier in identifiers:
        candidates |= _patients_with(session, identifier)
    survivors = {resolve_patient(session, c) for c in candidates}
    if len(survivors) == 1:
        return PatientMatch(patient_id=survivors.pop())
    if not survivors:
        return PatientMatch("", pb.UnmatchedReason.UNMATCHED_REASON_NO_MATCH)
    return PatientMatch("", pb.UnmatchedReason.UNMATCHED_REASON_AMBIGUOUS)


def _patients_with(session: Session, identifier: types.Identifier) -> set[str]:
    rows = session.exec(
        select(PatientIdentifierRow).where(
            PatientIdentifierRow.value == identifier.value
        )
    ).all()
    found: set[str] = set()
    for row in rows:
        if identifier.system and row.system == identifier.system:
            found.add(row.patient_id)
        elif (identifier.type_code == "MR" or not identifier.system) and (
            row.system.startswith(MRN_SYSTEM_PREFIX) or row.type_code == "MR"
        ):
            found.add(row.patient_id)
        elif identifier.type_code in ("NI", "NN") and row.system == NATIONAL_ID_SYSTEM:
            found.add(row.patient_id)
    return found


# Orders ------------------------------------------------------------------------


def insert_order(
    session: Session,
    order: pb.LabOrder,
    *,
    source_key: str | None,
    unmatched_id: str = "",
) -> None:
    session.add(
        OrderRow(
            order_id=order.order_id,
            patient_id=order.patient_id,
            unmatched_id=unmatched_id,
            source_key=source_key,
            version=order.version,
            payload=order.SerializeToString(deterministic=True),
            created_at=now_utc(),
        )
    )
    session.flush()


def update_order(session: Session, order: pb.LabOrder) -> None:
    row = session.get(OrderRow, order.order_id)
    if row is None:
        raise LookupError(order.order_id)
    row.patient_id = order.patient_id
    row.version = order.version
    row.payload = order.SerializeToString(deterministic=True)
    session.add(row)
    session.flush()


def get_order(session: Session, order_id: str) -> pb.LabOrder | None:
    row = session.get(OrderRow, order_id)
    return None if row is None else pb.LabOrder.FromString(row.payload)


def find_order_by_source(session: Session, source_key: str) -> pb.LabOrder | None:
    row = session.exec(
        select(OrderRow).where(OrderRow.source_key == source_key)
    ).first()
    return None if row is None else pb.LabOrder.FromString(row.payload)


def orders_of_unmatched(session: Session, unmatched_id: str) -> list[pb.LabOrder]:
    rows = session.exec(
        select(OrderRow)
        .where(OrderRow.unmatched_id == unmatched_id)
        .order_by(col(OrderRow.created_at), col(OrderRow.order_id))
    )
    return [pb.LabOrder.FromString(row.payload) for row in rows]


# Results -----------------------------------------------------------------------


def insert_result(
    session: Session,
    result: events.TestResult,
    *,
    source_key: str | None,
    unmatched_id: str = "",
    historical: bool = False,
    reason: str = "",
) -> None:
    payload = result.SerializeToString(deterministic=True)
    now = now_utc()
    session.add(
        ResultRow(
            result_id=result.result_id,
            patient_id=result.patient_id,
            order_id=result.order_id,
            unmatched_id=unmatched_id,
            loinc_code=_loinc_code(result),
            source_key=source_key,
            version=result.version,
            critical=result.critical,
            historical=historical,
            sort_at=_sort_time(result, now),
            payload=payload,
            created_at=now,
        )
    )
    session.add(
        ResultVersionRow(
            result_id=result.result_id,
            version=result.version,
            payload=payload,
            reason=reason,
            recorded_at=now,
        )
    )
    session.flush()


def replace_result(session: Session, result: events.TestResult, *, reason: str) -> None:
    """Store a new version of a result and keep the previous one in the history."""
    row = session.get(ResultRow, result.result_id)
    if row is None:
        raise LookupError(result.result_id)
    payload = result.SerializeToString(deterministic=True)
    row.patient_id = result.patient_id
    row.version = result.version
    row.critical = result.critical
    row.payload = payload
    row.sort_at = _sort_time(result, as_utc(row.created_at))
    session.add(row)
    session.add(
        ResultVersionRow(
            result_id=result.result_id,
            version=result.version,
            payload=payload,
            reason=reason,
            recorded_at=now_utc(),
        )
    )
    session.flush()


def attach_result(session: Session, result: events.TestResult) -> None:
    """Rewrite the newest version in place when only its patient id changed."""
    row = session.get(ResultRow, result.result_id)
    if row is None:
        raise LookupError(result.result_id)
    payload = result.SerializeToString(deterministic=True)
    row.patient_id = result.patient_id
    row.payload = payload
    session.add(row)
    version = session.get(ResultVersionRow, (result.result_id, result.version))
    if version is not None:
        version.payload = payload
        session.add(version)
    session.flush()


def get_result(session: Session, result_id: str) -> events.TestResult | None:
    row = session.get(ResultRow, result_id)
    return None if row is None else events.TestResult.FromString(row.payload)


def find_result_by_source(
    session: Session, source_key: str
) -> events.TestResult | None:
    row = session.exec(
        select(ResultRow).where(ResultRow.source_key == source_key)
    ).first()
    return None if row is None else events.TestResult.FromString(row.payload)


def result_versions(session: Session, result_id: str) -> list[events.TestResult]:
    rows = session.exec(
        select(ResultVersionRow)
        .where(ResultVersionRow.result_id == result_id)
        .order_by(col(ResultVersionRow.version))
    )
    return [events.TestResult.FromString(row.payload) for row in rows]


def results_of_unmatched(
    session: Session, unmatched_id: str
) -> list[events.TestResult]:
    rows = session.exec(
        select(ResultRow)
        .where(ResultRow.unmatched_id == unmatched_id)
        .order_by(col(ResultRow.created_at), col(ResultRow.result_id))
    )
    return [events.TestResult.FromString(row.payload) for row in rows]


def list_results(
    session: Session, patient_id: str, *, loinc_code: str, offset: int, limit: int
) -> tuple[list[events.TestResult], int]:
    """Return one page of a patient's results, newest first, and the total."""
    query = select(ResultRow).where(ResultRow.patient_id == patient_id)
    count = (
        select(func.count())
        .select_from(ResultRow)
        .where(ResultRow.patient_id == patient_id)
    )
    if loinc_code:
        query = query.where(ResultRow.loinc_code == loinc_code)
        count = count.where(ResultRow.loinc_code == loinc_code)
    rows = session.exec(
        query.order_by(col(ResultRow.sort_at).desc(), col(ResultRow.result_id))
        .offset(offset)
        .limit(limit)
    ).all()
    total = session.exec(count).one()
    return [events.TestResult.FromString(row.payload) for row in rows], int(total)


def count_results(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(ResultRow)).one())


def move_patient_rows(session: Session, merged_id: str, survivor_id: str) -> list[str]:
    """Re-key orders and results of a merged patient; return the result ids."""
    moved: list[str] = []
    for row in session.exec(select(ResultRow).where(ResultRow.patient_id == merged_id)):
        result = events.TestResult.FromString(row.payload)
        result.patient_id = survivor_id
        row.patient_id = survivor_id
        row.payload = result.SerializeToString(deterministic=True)
        session.add(row)
        moved.append(row.result_id)
    for order_row in session.exec(
        select(OrderRow).where(OrderRow.patient_id == merged_id)
    ):
        order = pb.LabOrder.FromString(order_row.payload)
        order.patient_id = survivor_id
        order_row.patient_id = survivor_id
        order_row.payload = order.SerializeToString(deterministic=True)
        session.add(order_row)
    session.flush()
    return moved


def get_acknowledgement(
    session: Session, result_id: str
) -> pb.CriticalAcknowledgement | None:
    row = session.get(AcknowledgementRow, result_id)
    if row is None:
        return None
    ack = pb.CriticalAcknowledgement(
        result_id=row.result_id, acknowledged_by=row.acknowledged_by, note=row.note
    )
    ack.acknowledged_at.FromDatetime(as_utc(row.acknowledged_at))
    return ack


def insert_acknowledgement(session: Session, ack: pb.CriticalAcknowledgement) -> None:
    session.add(
        AcknowledgementRow(
            result_id=ack.result_id,
            acknowledged_by=ack.acknowledged_by,
            acknowledged_at=ack.acknowledged_at.ToDatetime(tzinfo=UTC),
            note=ack.note,
        )
    )
    session.flush()


# Unmatched worklist ------------------------------------------------------------


def insert_unmatched(session: Session, item: pb.UnmatchedResult) -> None:
    header = pb.UnmatchedResult(identifiers=item.identifiers)
    session.add(
        UnmatchedRow(
            unmatched_id=item.unmatched_id,
            state=item.state,
            reason=item.reason,
            sending_facility=item.sending_facility,
            control_id=item.message_control_id,
            received_at=item.received_at.ToDatetime(tzinfo=UTC),
            version=item.version,
            identifiers=header.SerializeToString(deterministic=True),
        )
    )
    for identifier in item.identifiers:
        session.add(
            UnmatchedIdentifierRow(
                unmatched_id=item.unmatched_id, value=identifier.value
            )
        )
    session.flush()


def get_unmatched(session: Session, unmatched_id: str) -> pb.UnmatchedResult | None:
    row = session.get(UnmatchedRow, unmatched_id)
    return None if row is None else _unmatched_message(session, row, with_items=True)


def open_unmatched_with_values(session: Session, values: Iterable[str]) -> list[str]:
    """Return ids of OPEN worklist items that carry any of ``values``."""
    wanted = sorted(set(values))
    if not wanted:
        return []
    rows = session.exec(
        select(UnmatchedIdentifierRow.unmatched_id)
        .join(
            UnmatchedRow,
            col(UnmatchedRow.unmatched_id) == UnmatchedIdentifierRow.unmatched_id,
        )
        .where(col(UnmatchedIdentifierRow.value).in_(wanted))
        .where(UnmatchedRow.state == pb.UnmatchedState.UNMATCHED_STATE_OPEN)
        .distinct()
    ).all()
    return sorted(rows)


def set_unmatched_state(
    session: Session, unmatched_id: str, *, state: int, patient_id: str, reason: int
) -> None:
    row = session.get(UnmatchedRow, unmatched_id)
    if row is None:
        raise LookupError(unmatched_id)
    row.state = state
    row.patient_id = patient_id
    row.reason = reason
    row.version += 1
    session.add(row)
    session.flush()


def list_unmatched(
    session: Session, *, include_linked: bool, offset: int, limit: int
) -> tuple[list[pb.UnmatchedResult], int]:
    query = select(UnmatchedRow)
    count = select(func.count()).select_from(UnmatchedRow)
    if not include_linked:
        query = query.where(
            UnmatchedRow.state == pb.UnmatchedState.UNMATCHED_STATE_OPEN
        )
        count = count.where(
            UnmatchedRow.state == pb.UnmatchedState.UNMATCHED_STATE_OPEN
        )
    rows = session.exec(
        query.order_by(col(UnmatchedRow.received_at), col(UnmatchedRow.unmatched_id))
        .offset(offset)
        .limit(limit)
    ).all()
    total = int(session.exec(count).one())
    return [_unmatched_message(session, row, with_items=True) for row in rows], total


def _unmatched_message(
    session: Session, row: UnmatchedRow, *, with_items: bool
) -> pb.UnmatchedResult:
    item = pb.UnmatchedResult.FromString(row.identifiers)
    item.unmatched_id = row.unmatched_id
    item.state = row.state  # type: ignore[assignment]
    item.reason = row.reason  # type: ignore[assignment]
    item.sending_facility = row.sending_facility
    item.message_control_id = row.control_id
    item.received_at.FromDatetime(as_utc(row.received_at))
    item.patient_id = row.patient_id
    item.version = row.version
    if with_items:
        item.results.extend(results_of_unmatched(session, row.unmatched_id))
        item.orders.extend(orders_of_unmatched(session, row.unmatched_id))
    return item


# Inbound HL7 messages and idempotency -------------------------------------------


def find_inbound(
    session: Session, sending_facility: str, control_id: str
) -> InboundMessageRow | None:
    return session.exec(
        select(InboundMessageRow)
        .where(InboundMessageRow.sending_facility == sending_facility)
        .where(InboundMessageRow.control_id == control_id)
    ).first()


def insert_inbound(session: Session, row: InboundMessageRow) -> None:
    session.add(row)
    session.flush()


def get_idempotent(session: Session, key: str) -> bytes | None:
    row = session.get(IdempotencyRow, key)
    return None if row is None else row.response


def put_idempotent(session: Session, key: str, response: bytes) -> None:
    session.add(IdempotencyRow(key=key, response=response, created_at=now_utc()))
    session.flush()


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode("ascii")


def decode_page_token(token: str) -> int | None:
    """Return the offset in a page token, or None when the token is invalid."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError):
        return None
    if not text.startswith("o:") or not text[2:].isdigit():
        return None
    return int(text[2:])


def _loinc_code(result: events.TestResult) -> str:
    return result.test.code if result.test.system == "http://loinc.org" else ""


def _sort_time(result: events.TestResult, fallback: datetime) -> datetime:
    if result.HasField("effective_at"):
        return result.effective_at.ToDatetime(tzinfo=UTC)
    if result.HasField("issued_at"):
        return result.issued_at.ToDatetime(tzinfo=UTC)
    return fallback
