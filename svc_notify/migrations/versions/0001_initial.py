"""Create the notify tables, with the outbox and inbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hin_inbox",
        sa.Column("consumer_group", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer_group", "event_id"),
    )
    with op.batch_alter_table("hin_inbox", schema=None) as batch_op:
        batch_op.create_index("ix_hin_inbox_applied_at", ["applied_at"], unique=False)

    op.create_table(
        "hin_outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("traceparent", sa.String(length=55), nullable=False),
        sa.Column("tracestate", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("send_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("hin_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_hin_outbox_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_hin_outbox_pending", ["sent_at", "seq"], unique=False)

    op.create_table(
        "notify_appointments",
        sa.Column("appointment_id", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("practitioner_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("appointment_id"),
    )
    op.create_table(
        "notify_critical_alerts",
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("result_id", sa.String(length=128), nullable=False),
        sa.Column("result_version", sa.BigInteger(), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("ordering_practitioner_id", sa.String(length=128), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("source_event_id", sa.String(length=64), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=255), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("alert_id"),
        sa.UniqueConstraint(
            "result_id", "result_version", name="uq_notify_alerts_result"
        ),
    )
    with op.batch_alter_table("notify_critical_alerts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_alerts_due", ["status", "next_due_at"], unique=False
        )

    op.create_table(
        "notify_deliveries",
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("notification_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=300), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("source_event_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id"),
        sa.UniqueConstraint(
            "source_event_id",
            "recipient",
            "channel",
            name="uq_notify_deliveries_source",
        ),
    )
    with op.batch_alter_table("notify_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_deliveries_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            "ix_notify_deliveries_notification", ["notification_id"], unique=False
        )
        batch_op.create_index(
            "ix_notify_deliveries_recipient", ["recipient", "created_at"], unique=False
        )

    op.create_table(
        "notify_escalation_steps",
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=300), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", "level"),
    )
    op.create_table(
        "notify_intents",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("source_event_id", sa.String(length=64), nullable=False),
        sa.Column("source_event_type", sa.String(length=255), nullable=False),
        sa.Column("recipient", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "source_event_id", "recipient", name="uq_notify_intents_source"
        ),
    )
    with op.batch_alter_table("notify_intents", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_intents_pending", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "notify_notifications",
        sa.Column("notification_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=300), nullable=False),
        sa.Column("sequence_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("source_event_id", sa.String(length=64), nullable=False),
        sa.Column("source_event_type", sa.String(length=255), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("notification_id"),
        sa.UniqueConstraint(
            "recipient", "sequence_id", name="uq_notify_notifications_seq"
        ),
        sa.UniqueConstraint(
            "source_event_id", "recipient", name="uq_notify_notifications_source"
        ),
    )
    op.create_table(
        "notify_patients",
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("deceased", sa.Boolean(), nullable=False),
        sa.Column("surviving_patient_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "notify_preferences",
        sa.Column("recipient", sa.String(length=300), nullable=False),
        sa.Column("channels", sa.String(length=64), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("quiet_start_minute", sa.Integer(), nullable=True),
        sa.Column("quiet_end_minute", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("webhook_url", sa.String(length=2048), nullable=False),
        sa.Column("webhook_secret", sa.String(length=256), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("recipient"),
    )
    op.create_table(
        "notify_role_members",
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("practitioner_ids", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "role"),
    )
    op.create_table(
        "notify_rosters",
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("department", sa.String(length=128), nullable=False),
        sa.Column("on_call_practitioner_ids", sa.Text(), nullable=False),
        sa.Column(
            "department_head_practitioner_id", sa.String(length=128), nullable=False
        ),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "department"),
    )
    op.create_table(
        "notify_stream_cursors",
        sa.Column("recipient", sa.String(length=300), nullable=False),
        sa.Column("last_sequence_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("recipient"),
    )


def downgrade() -> None:
    op.drop_table("notify_stream_cursors")
    op.drop_table("notify_rosters")
    op.drop_table("notify_role_members")
    op.drop_table("notify_preferences")
    op.drop_table("notify_patients")
    op.drop_table("notify_notifications")
    with op.batch_alter_table("notify_intents", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_intents_pending")

    op.drop_table("notify_intents")
    op.drop_table("notify_escalation_steps")
    with op.batch_alter_table("notify_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_deliveries_recipient")
        batch_op.drop_index("ix_notify_deliveries_notification")
        batch_op.drop_index("ix_notify_deliveries_due")

    op.drop_table("notify_deliveries")
    with op.batch_alter_table("notify_critical_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_alerts_due")

    op.drop_table("notify_critical_alerts")
    op.drop_table("notify_appointments")
    with op.batch_alter_table("hin_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_outbox_pending")
        batch_op.drop_index("ix_hin_outbox_created_at")

    op.drop_table("hin_outbox")
    with op.batch_alter_table("hin_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_inbox_applied_at")

    op.drop_table("hin_inbox")
