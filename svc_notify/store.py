"""Queries of svc_notify; every function works in the session it is given."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from hin.notify.v1 import notify_service_pb2 as pb
from hin.records.v1 import events_pb2 as records
from svc_notify.domain import policy
from svc_notify.tables import (
    AppointmentRow,
    CriticalAlertRow,
    DeliveryRow,
    EscalationStepRow,
    IntentRow,
    NotificationRow,
    PatientContactRow,
    PreferencesRow,
    RoleMembersRow,
    RosterRow,
    StreamCursorRow,
)

#: Maximum number of merge links followed from a patient to the survivor.
MAX_MERGE_DEPTH = 16

INTENT_PENDING = "pending"
INTENT_DONE = "done"
ALERT_OPEN = "open"
ALERT_ACKNOWLEDGED = "acknowledged"
ALERT_EXHAUSTED = "exhausted"


def aware(moment: datetime) -> datetime:
    """Return ``moment`` in UTC; SQLite hands back naive datetimes."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def dump_json(value: object) -> str:
    """Serialize attributes and id lists the same way everywhere."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# Patients and appointments ------------------------------------------------


def save_patient(
    session: Session, snapshot: records.PatientSnapshot, now: datetime
) -> None:
    """Store the contact details of a patient snapshot, unless they are older."""
    row = session.get(PatientContactRow, snapshot.patient_id)
    if row is None:
        row = PatientContactRow(patient_id=snapshot.patient_id, updated_at=now)
        session.add(row)
    elif snapshot.version and snapshot.version < row.version:
        return
    row.organization_id = snapshot.managing_organization_id
    row.email = _contact(snapshot, ("email",))
    row.phone = _contact(snapshot, ("sms", "phone"))
    row.deceased = snapshot.deceased
    row.version = snapshot.version
    row.updated_at = now


def merge_patient(
    session: Session, merged_patient_id: str, surviving_patient_id: str, now: datetime
) -> None:
    """Point a merged patient record at its survivor."""
    row = session.get(PatientContactRow, merged_patient_id)
    if row is None:
        row = PatientContactRow(patient_id=merged_patient_id, updated_at=now)
        session.add(row)
    row.surviving_patient_id = surviving_patient_id
    row.updated_at = now


def resolve_patient(session: Session, patient_id: str) -> str:
    """Follow merge links to the surviving patient id."""
    current = patient_id
    for _ in range(MAX_MERGE_DEPTH):
        row = session.get(PatientContactRow, current)
        if row is None or not row.surviving_patient_id:
            return current
        current = row.surviving_patient_id
    return current


def load_patient(session: Session, patient_id: str) -> PatientContactRow | None:
    """Return the stored contact details of a patient."""
    return session.get(PatientContactRow, patient_id)


def save_appointment(
    session: Session,
    *,
    appointment_id: str,
    patient_id: str,
    practitioner_id: str,
    organization_id: str,
) -> None:
    """Remember which patient an appointment belongs to."""
    row = session.get(AppointmentRow, appointment_id)
    if row is None:
        row = AppointmentRow(appointment_id=appointment_id, patient_id=patient_id)
        session.add(row)
    row.patient_id = patient_id
    row.practitioner_id = practitioner_id
    row.organization_id = organization_id


def patients_by_appointment(
    session: Session, appointment_ids: Sequence[str]
) -> dict[str, str]:
    """Return appointment id -> patient id for the known appointments."""
    if not appointment_ids:
        return {}
    rows = session.exec(
        select(AppointmentRow).where(
            col(AppointmentRow.appointment_id).in_(list(appointment_ids))
        )
    )
    return {row.appointment_id: row.patient_id for row in rows}


def _contact(snapshot: records.PatientSnapshot, systems: Sequence[str]) -> str:
    # Prefer a mobile number for SMS; otherwise the first entry of the first
    # matching system.
    for system in systems:
        points = [p for p in snapshot.telecom if p.system == system and p.value]
        mobile = [p for p in points if p.use == "mobile"]
        if mobile or points:
            return (mobile or points)[0].value
    return ""


# Intents -------------------------------------------------------------------


@dataclass(frozen=True)
class NewIntent:
    """A notification that an event requests, before its recipient is expanded."""

    recipient: str
    kind: int
    priority: int
    patient_id: str
    organization_id: str
    attributes: Mapping[str, str]


def add_intents(
    session: Session,
    *,
    source_event_id: str,
    source_event_type: str,
    intents: Iterable[NewIntent],
    now: datetime,
) -> int:
    """Store intents, skipping any (event, recipient) pair already stored."""
    added = 0
    for intent in intents:
        exists = session.exec(
            select(IntentRow.id)
            .where(IntentRow.source_event_id == source_event_id)
            .where(IntentRow.recipient == intent.recipient)
        ).first()
        if exists is not None:
            continue
        session.add(
            IntentRow(
                source_event_id=source_event_id,
                source_event_type=source_event_type,
                recipient=intent.recipient,
                kind=intent.kind,
                priority=intent.priority,
                patient_id=intent.patient_id,
                organization_id=intent.organization_id,
                attributes=dump_json(dict(intent.attributes)),
                next_attempt_at=now,
                created_at=now,
            )
        )
        added += 1
    return added


def due_intents(session: Session, now: datetime, limit: int) -> list[IntentRow]:
    """Return pending intents whose next attempt is due, oldest first."""
    return list(
        session.exec(
            select(IntentRow)
            .where(IntentRow.status == INTENT_PENDING)
            .where(IntentRow.next_attempt_at <= now)
            .order_by(col(IntentRow.id))
            .limit(limit)
        )
    )


# Notifications ---------------------------------------------------------------


def next_sequence_id(session: Session, recipient: str) -> int:
    """Allocate the next sequence id of a recipient's stream.

    The cursor row is locked until the transaction ends, so two transactions
    writing to one stream commit in sequence order and a reader never sees
    sequence n + 1 before n.
    """
    cursor = session.exec(
        select(StreamCursorRow)
        .where(StreamCursorRow.recipient == recipient)
        .with_for_update()
    ).first()
    if cursor is None:
        cursor = StreamCursorRow(recipient=recipient, last_sequence_id=0)
        session.add(cursor)
    cursor.last_sequence_id += 1
    session.flush()
    return cursor.last_sequence_id


def find_notification(
    session: Session, source_event_id: str, recipient: str
) -> NotificationRow | None:
    """Return the notification an event already caused for a recipient."""
    return session.exec(
        select(NotificationRow)
        .where(NotificationRow.source_event_id == source_event_id)
        .where(NotificationRow.recipient == recipient)
    ).first()


def notifications_after(
    session: Session, recipient: str, after_sequence_id: int, limit: int
) -> list[NotificationRow]:
    """Return a recipient's notifications above a sequence id, in order."""
    return list(
        session.exec(
            select(NotificationRow)
            .where(NotificationRow.recipient == recipient)
            .where(NotificationRow.sequence_id > after_sequence_id)
            .order_by(col(NotificationRow.sequence_id))
            .limit(limit)
        )
    )


def notifications_before(
    session: Session, recipient: str, before_sequence_id: int | None, limit: int
) -> list[NotificationRow]:
    """Return a recipient's notifications below a sequence id, newest first."""
    query = select(NotificationRow).where(NotificationRow.recipient == recipient)
    if before_sequence_id is not None:
        query = query.where(NotificationRow.sequence_id < before_sequence_id)
    return list(
        session.exec(
            query.order_by(col(NotificationRow.sequence_id).desc()).limit(limit)
        )
    )


def count_notifications(session: Session, recipient: str) -> int:
    """Count a recipient's stored notifications."""
    return int(
        session.exec(
            select(func.count())
            .select_from(NotificationRow)
            .where(NotificationRow.recipient == recipient)
        ).one()
    )


# Deliveries ------------------------------------------------------------------


def add_delivery(
    session: Session,
    *,
    notification: NotificationRow,
    channel: int,
    status: int,
    now: datetime,
    last_error: str = "",
) -> DeliveryRow | None:
    """Log a delivery, unless (event, recipient, channel) is logged already."""
    exists = session.exec(
        select(DeliveryRow.delivery_id)
        .where(DeliveryRow.source_event_id == notification.source_event_id)
        .where(DeliveryRow.recipient == notification.recipient)
        .where(DeliveryRow.channel == channel)
    ).first()
    if exists is not None:
        return None
    pending = status == pb.DELIVERY_STATUS_PENDING
    row = DeliveryRow(
        delivery_id=str(uuid.uuid4()),
        notification_id=notification.notification_id,
        recipient=notification.recipient,
        channel=channel,
        source_event_id=notification.source_event_id,
        status=status,
        attempts=0 if pending else 1,
        last_error=last_error,
        next_attempt_at=now if pending else None,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    return row


def claim_due_deliveries(
    session: Session, now: datetime, lease_until: datetime, limit: int
) -> list[str]:
    """Lease due pending deliveries to the caller and return their ids.

    The lease moves next_attempt_at past ``now``, so another worker skips the
    rows until the lease runs out, which happens only if this one dies.
    """
    rows = list(
        session.exec(
            select(DeliveryRow)
            .where(DeliveryRow.status == pb.DELIVERY_STATUS_PENDING)
            .where(col(DeliveryRow.next_attempt_at) <= now)
            .order_by(col(DeliveryRow.next_attempt_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for row in rows:
        row.next_attempt_at = lease_until
    return [row.delivery_id for row in rows]


def load_delivery(session: Session, delivery_id: str) -> DeliveryRow | None:
    """Return one delivery."""
    return session.get(DeliveryRow, delivery_id)


def list_deliveries(
    session: Session,
    *,
    recipient: str,
    notification_id: str,
    source_event_id: str,
    offset: int,
    limit: int,
) -> tuple[list[DeliveryRow], int]:
    """Return one page of the delivery log and the number of matching rows."""
    conditions = []
    if recipient:
        conditions.append(DeliveryRow.recipient == recipient)
    if notification_id:
        conditions.append(DeliveryRow.notification_id == notification_id)
    if source_event_id:
        conditions.append(DeliveryRow.source_event_id == source_event_id)
    query = select(DeliveryRow).where(*conditions)
    rows = session.exec(
        query.order_by(
            col(DeliveryRow.created_at),
            col(DeliveryRow.channel),
            col(DeliveryRow.delivery_id),
        )
        .offset(offset)
        .limit(limit)
    )
    total = session.exec(
        select(func.count()).select_from(DeliveryRow).where(*conditions)
    ).one()
    return list(rows), int(total)


# Preferences, rosters, roles ---------------------------------------------------


def load_preferences(session: Session, recipient: str) -> PreferencesRow | None:
    """Return a recipient's stored preferences."""
    return session.get(PreferencesRow, recipient)


def load_roster(
    session: Session, organization_id: str, department: str
) -> RosterRow | None:
    """Return the roster of one department."""
    return session.get(RosterRow, (organization_id, department))


def rosters_of(session: Session, organization_id: str) -> list[RosterRow]:
    """Return every roster of an organization."""
    return list(
        session.exec(
            select(RosterRow)
            .where(RosterRow.organization_id == organization_id)
            .order_by(col(RosterRow.department))
        )
    )


def load_role_members(
    session: Session, organization_id: str, role: str
) -> RoleMembersRow | None:
    """Return the members of a role in an organization."""
    return session.get(RoleMembersRow, (organization_id, role))


def to_roster(row: RosterRow) -> policy.Roster:
    """Convert a roster row to the domain's roster."""
    return policy.Roster(
        department=row.department,
        on_call=id_list(row.on_call_practitioner_ids),
        head=row.department_head_practitioner_id,
    )


def id_list(text: str) -> list[str]:
    """Decode a JSON list of ids stored in a text column."""
    value = json.loads(text or "[]")
    return [str(item) for item in value]


# Critical alerts -----------------------------------------------------------------


def find_alert(
    session: Session, result_id: str, result_version: int
) -> CriticalAlertRow | None:
    """Return the alert of one critical result version."""
    return session.exec(
        select(CriticalAlertRow)
        .where(CriticalAlertRow.result_id == result_id)
        .where(CriticalAlertRow.result_version == result_version)
    ).first()


def open_alerts_of_result(session: Session, result_id: str) -> list[CriticalAlertRow]:
    """Return the open alerts of every version of a result."""
    return list(
        session.exec(
            select(CriticalAlertRow)
            .where(CriticalAlertRow.result_id == result_id)
            .where(CriticalAlertRow.status == ALERT_OPEN)
            .with_for_update()
        )
    )


def due_alert_ids(session: Session, now: datetime, limit: int) -> list[str]:
    """Return ids of open alerts whose next escalation is due."""
    return list(
        session.exec(
            select(CriticalAlertRow.alert_id)
            .where(CriticalAlertRow.status == ALERT_OPEN)
            .where(col(CriticalAlertRow.next_due_at) <= now)
            .order_by(col(CriticalAlertRow.next_due_at))
            .limit(limit)
        )
    )


def lock_alert(session: Session, alert_id: str) -> CriticalAlertRow | None:
    """Load an alert and lock it until the transaction ends."""
    return session.exec(
        select(CriticalAlertRow)
        .where(CriticalAlertRow.alert_id == alert_id)
        .with_for_update()
    ).first()


def add_step(
    session: Session,
    *,
    alert_id: str,
    level: int,
    recipient: str,
    event_id: str,
    now: datetime,
) -> None:
    """Record one escalation step."""
    session.add(
        EscalationStepRow(
            alert_id=alert_id,
            level=level,
            recipient=recipient,
            event_id=event_id,
            occurred_at=now,
        )
    )


def steps_of(session: Session, alert_id: str) -> list[EscalationStepRow]:
    """Return the steps of an alert in level order."""
    return list(
        session.exec(
            select(EscalationStepRow)
            .where(EscalationStepRow.alert_id == alert_id)
            .order_by(col(EscalationStepRow.level))
        )
    )
