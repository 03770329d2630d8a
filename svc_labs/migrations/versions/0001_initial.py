"""Create the svc_labs tables.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 16:59:08.080418
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
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
        "labs_critical_acknowledgement",
        sa.Column(
            "result_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "acknowledged_by",
            sqlmodel.sql.sqltypes.AutoString(length=255),
            nullable=False,
        ),
        sa.Column(
            "acknowledged_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False
        ),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("result_id"),
    )
    op.create_table(
        "labs_idempotency",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "labs_inbound_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "sending_facility",
            sqlmodel.sql.sqltypes.AutoString(length=255),
            nullable=False,
        ),
        sa.Column(
            "control_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column(
            "message_type", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False
        ),
        sa.Column(
            "ack_code", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False
        ),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("error_text", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sending_facility", "control_id"),
    )
    op.create_table(
        "labs_order",
        sa.Column(
            "order_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "unmatched_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "source_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
        sa.UniqueConstraint("source_key"),
    )
    with op.batch_alter_table("labs_order", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labs_order_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_labs_order_unmatched_id"), ["unmatched_id"], unique=False
        )

    op.create_table(
        "labs_patient",
        sa.Column(
            "patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "merged_into", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "organization_id",
            sqlmodel.sql.sqltypes.AutoString(length=128),
            nullable=False,
        ),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    with op.batch_alter_table("labs_patient", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labs_patient_merged_into"), ["merged_into"], unique=False
        )

    op.create_table(
        "labs_patient_identifier",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "system", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column(
            "value", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column(
            "type_code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("labs_patient_identifier", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labs_patient_identifier_patient_id"),
            ["patient_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_labs_patient_identifier_value"), ["value"], unique=False
        )

    op.create_table(
        "labs_result",
        sa.Column(
            "result_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "order_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "unmatched_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "loinc_code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "source_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("historical", sa.Boolean(), nullable=False),
        sa.Column("sort_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("result_id"),
        sa.UniqueConstraint("source_key"),
    )
    with op.batch_alter_table("labs_result", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labs_result_loinc_code"), ["loinc_code"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_labs_result_order_id"), ["order_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_labs_result_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_labs_result_sort_at"), ["sort_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_labs_result_unmatched_id"), ["unmatched_id"], unique=False
        )

    op.create_table(
        "labs_result_version",
        sa.Column(
            "result_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("recorded_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("result_id", "version"),
    )
    op.create_table(
        "labs_unmatched",
        sa.Column(
            "unmatched_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Integer(), nullable=False),
        sa.Column(
            "sending_facility",
            sqlmodel.sql.sqltypes.AutoString(length=255),
            nullable=False,
        ),
        sa.Column(
            "control_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column(
            "patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("identifiers", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("unmatched_id"),
    )
    with op.batch_alter_table("labs_unmatched", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labs_unmatched_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_labs_unmatched_state"), ["state"], unique=False
        )

    op.create_table(
        "labs_unmatched_identifier",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "unmatched_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column(
            "value", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("labs_unmatched_identifier", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labs_unmatched_identifier_unmatched_id"),
            ["unmatched_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_labs_unmatched_identifier_value"), ["value"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("labs_unmatched_identifier", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labs_unmatched_identifier_value"))
        batch_op.drop_index(batch_op.f("ix_labs_unmatched_identifier_unmatched_id"))

    op.drop_table("labs_unmatched_identifier")
    with op.batch_alter_table("labs_unmatched", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labs_unmatched_state"))
        batch_op.drop_index(batch_op.f("ix_labs_unmatched_received_at"))

    op.drop_table("labs_unmatched")
    op.drop_table("labs_result_version")
    with op.batch_alter_table("labs_result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labs_result_unmatched_id"))
        batch_op.drop_index(batch_op.f("ix_labs_result_sort_at"))
        batch_op.drop_index(batch_op.f("ix_labs_result_patient_id"))
        batch_op.drop_index(batch_op.f("ix_labs_result_order_id"))
        batch_op.drop_index(batch_op.f("ix_labs_result_loinc_code"))

    op.drop_table("labs_result")
    with op.batch_alter_table("labs_patient_identifier", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labs_patient_identifier_value"))
        batch_op.drop_index(batch_op.f("ix_labs_patient_identifier_patient_id"))

    op.drop_table("labs_patient_identifier")
    with op.batch_alter_table("labs_patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labs_patient_merged_into"))

    op.drop_table("labs_patient")
    with op.batch_alter_table("labs_order", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labs_order_unmatched_id"))
        batch_op.drop_index(batch_op.f("ix_labs_order_patient_id"))

    op.drop_table("labs_order")
    op.drop_table("labs_inbound_message")
    op.drop_table("labs_idempotency")
    op.drop_table("labs_critical_acknowledgement")
    with op.batch_alter_table("hin_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_outbox_pending")
        batch_op.drop_index("ix_hin_outbox_created_at")

    op.drop_table("hin_outbox")
    with op.batch_alter_table("hin_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_inbox_applied_at")

    op.drop_table("hin_inbox")
