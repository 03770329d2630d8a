"""Tables of svc_notify, on the package's own SQLModel registry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from mesh.runtime.events import add_event_tables

# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


class NotifyBase(SQLModel, registry=registry()):
    """Base of every svc_notify table."""


def _time(nullable: bool = False) -> object:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable))


class PatientContactRow(NotifyBase, table=True):
    """Contact details of a patient, copied from records events."""

    __tablename__ = "notify_patients"

    patient_id: str = Field(primary_key=True, max_length=128)
    organization_id: str = Field(default="", max_length=128)
    email: str = Field(default="", max_length=320)
    phone: str = Field(default="", max_length=32)
    deceased: bool = False
    #: Set when this record was merged into another one.
    surviving_patient_id: str = Field(default="", max_length=128)
    #: Version of the patient record the copy was taken from.
    version: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = _time()  # type: ignore[assignment]


class AppointmentRow(NotifyBase, table=True):
    """Patient of each known appointment, for availability changes."""

    __tablename__ = "notify_appointments"

    appointment_id: str = Field(primary_key=True, max_length=128)
    patient_id: str = Field(max_length=128)
    practitioner_id: str = Field(default="", max_length=128)
    organization_id: str = Field(default="", max_length=128)


class IntentRow(NotifyBase, table=True):
    """Notification that an event requests, waiting for the consent check.

    Event handlers write intents in the consumer's transaction; the dispatcher
    checks consent, expands roles and turns them into notifications.
    """

    __tablename__ = "notify_intents"
    __table_args__ = (
        UniqueConstraint(
            "source_event_id", "recipient", name="uq_notify_intents_source"
        ),
        Index("ix_notify_intents_pending", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ROW_ID, primary_key=True))
    source_event_id: str = Field(max_length=64)
    source_event_type: str = Field(max_length=255)
    recipient: str = Field(max_length=300)
    kind: int
    priority: int
    patient_id: str = Field(default="", max_length=128)
    organization_id: str = Field(default="", max_length=128)
    attributes: str = Field(default="{}", sa_type=Text)
    #: "pending" or "done".
    status: str = Field(default="pending", max_length=16)
    #: Outcome of the dispatch: recipients notified and denied, by opaque id.
    outcome: str = Field(default="", sa_type=Text)
    attempts: int = 0
    next_attempt_at: datetime = _time()  # type: ignore[assignment]
    created_at: datetime = _time()  # type: ignore[assignment]


class NotificationRow(NotifyBase, table=True):
    """One notification in one recipient's stream."""

    __tablename__ = "notify_notifications"
    __table_args__ = (
        UniqueConstraint(
            "recipient", "sequence_id", name="uq_notify_notifications_seq"
        ),
        UniqueConstraint(
            "source_event_id", "recipient", name="uq_notify_notifications_source"
        ),
    )

    notification_id: str = Field(primary_key=True, max_length=36)
    recipient: str = Field(max_length=300)
    sequence_id: int = Field(sa_type=BigInteger)
    kind: int
    priority: int
    patient_id: str = Field(default="", max_length=128)
    organization_id: str = Field(default="", max_length=128)
    language: str = Field(max_length=8)
    title: str = Field(sa_type=Text)
    summary: str = Field(sa_type=Text)
    body: str = Field(sa_type=Text)
    source_event_id: str = Field(max_length=64)
    source_event_type: str = Field(max_length=255)
    attributes: str = Field(default="{}", sa_type=Text)
    created_at: datetime = _time()  # type: ignore[assignment]


class StreamCursorRow(NotifyBase, table=True):
    """Last sequence id handed out in a recipient's stream."""

    __tablename__ = "notify_stream_cursors"

    recipient: str = Field(primary_key=True, max_length=300)
    last_sequence_id: int = Field(default=0, sa_type=BigInteger)


class DeliveryRow(NotifyBase, table=True):
    """One notification over one channel: the delivery log and the send queue."""

    __tablename__ = "notify_deliveries"
    __table_args__ = (
        UniqueConstraint(
            "source_event_id",
            "recipient",
            "channel",
            name="uq_notify_deliveries_source",
        ),
        Index("ix_notify_deliveries_due", "status", "next_attempt_at"),
        Index("ix_notify_deliveries_recipient", "recipient", "created_at"),
        Index("ix_notify_deliveries_notification", "notification_id"),
    )

    delivery_id: str = Field(primary_key=True, max_length=36)
    notification_id: str = Field(max_length=36)
    recipient: str = Field(max_length=300)
    channel: int
    source_event_id: str = Field(max_length=64)
    #: A hin.notify.v1.DeliveryStatus number.
    status: int
    attempts: int = 0
    last_error: str = Field(default="", sa_type=Text)
    #: When the worker may try next; NULL once the delivery is final.
    next_attempt_at: datetime | None = _time(nullable=True)  # type: ignore[assignment]
    created_at: datetime = _time()  # type: ignore[assignment]
    updated_at: datetime = _time()  # type: ignore[assignment]


class PreferencesRow(NotifyBase, table=True):
    """Channels, language, quiet hours and addresses of one recipient."""

    __tablename__ = "notify_preferences"

    recipient: str = Field(primary_key=True, max_length=300)
    #: Comma-separated hin.notify.v1.Channel numbers.
    channels: str = Field(default="", max_length=64)
    language: str = Field(default="", max_length=8)
    time_zone: str = Field(default="", max_length=64)
    #: Quiet hours as minutes after local midnight; NULL for none.
    quiet_start_minute: int | None = None
    quiet_end_minute: int | None = None
    email: str = Field(default="", max_length=320)
    phone: str = Field(default="", max_length=32)
    webhook_url: str = Field(default="", max_length=2048)
    # NOTE: the webhook secret is stored in clear text because HMAC signing
    # needs it; protect the database like any other credential store.
    webhook_secret: str = Field(default="", max_length=256)
    version: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = _time()  # type: ignore[assignment]


class RosterRow(NotifyBase, table=True):
    """On-call order and head of one department of an organization."""

    __tablename__ = "notify_rosters"

    organization_id: str = Field(primary_key=True, max_length=128)
    department: str = Field(primary_key=True, max_length=128)
    #: JSON list of practitioner ids in call order.
    on_call_practitioner_ids: str = Field(default="[]", sa_type=Text)
    department_head_practitioner_id: str = Field(default="", max_length=128)
    version: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = _time()  # type: ignore[assignment]


class RoleMembersRow(NotifyBase, table=True):
    """Practitioners holding a role in an organization, such as privacy officers."""

    __tablename__ = "notify_role_members"

    organization_id: str = Field(primary_key=True, max_length=128)
    role: str = Field(primary_key=True, max_length=64)
    #: JSON list of practitioner ids.
    practitioner_ids: str = Field(default="[]", sa_type=Text)
    version: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = _time()  # type: ignore[assignment]


class CriticalAlertRow(NotifyBase, table=True):
    """Escalation state of one critical result version."""

    __tablename__ = "notify_critical_alerts"
    __table_args__ = (
        UniqueConstraint("result_id", "result_version", name="uq_notify_alerts_result"),
        Index("ix_notify_alerts_due", "status", "next_due_at"),
    )

    alert_id: str = Field(primary_key=True, max_length=36)
    result_id: str = Field(max_length=128)
    result_version: int = Field(default=0, sa_type=BigInteger)
    patient_id: str = Field(max_length=128)
    organization_id: str = Field(default="", max_length=128)
    ordering_practitioner_id: str = Field(default="", max_length=128)
    #: Last escalation level reached: 0 ordering clinician, 1 next on-call
    #: clinician, 2 department head.
    level: int = 0
    #: "open", "acknowledged" or "exhausted".
    status: str = Field(default="open", max_length=16)
    #: When the next level is due without an acknowledgment; NULL once closed.
    next_due_at: datetime | None = _time(nullable=True)  # type: ignore[assignment]
    attributes: str = Field(default="{}", sa_type=Text)
    source_event_id: str = Field(max_length=64)
    acknowledged_by: str = Field(default="", max_length=255)
    acknowledged_at: datetime | None = _time(nullable=True)  # type: ignore[assignment]
    created_at: datetime = _time()  # type: ignore[assignment]


class EscalationStepRow(NotifyBase, table=True):
    """One step of a critical result escalation."""

    __tablename__ = "notify_escalation_steps"

    alert_id: str = Field(primary_key=True, max_length=36)
    level: int = Field(primary_key=True)
    #: Recipient notified at this level; empty when the roster named no one.
    recipient: str = Field(default="", max_length=300)
    #: Id of the CriticalAlertEscalated event of this step.
    event_id: str = Field(default="", max_length=64)
    occurred_at: datetime = _time()  # type: ignore[assignment]


add_event_tables(NotifyBase.metadata)
