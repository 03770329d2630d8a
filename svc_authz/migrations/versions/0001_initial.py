"""Create the authz tables, with the outbox and inbox, and the chain head

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
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "audit_records",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("audit_id", sa.String(length=36), nullable=False),
        sa.Column("recorded_at", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("roles", sa.String(length=255), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("calling_service", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("emergency", sa.Boolean(), nullable=False),
        sa.Column("redact_clinical", sa.Boolean(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.String(length=32), nullable=False),
        sa.Column("previous_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
        sa.UniqueConstraint("audit_id"),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_records_patient", ["patient_id", "sequence"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_audit_records_trace_id"), ["trace_id"], unique=False
        )

    op.create_table(
        "break_glass_grants",
        sa.Column("grant_id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("grant_id"),
    )
    with op.batch_alter_table("break_glass_grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_break_glass_patient", ["patient_id", "subject"], unique=False
        )

    op.create_table(
        "care_relationships",
        sa.Column("relationship_id", sa.String(length=255), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("relationship_id"),
    )
    with op.batch_alter_table("care_relationships", schema=None) as batch_op:
        batch_op.create_index(
            "ix_care_relationships_patient",
            ["patient_id", "practitioner_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_care_relationships_source_id"), ["source_id"], unique=False
        )

    op.create_table(
        "consents",
        sa.Column("consent_id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("grantee_organization_id", sa.String(length=64), nullable=False),
        sa.Column("purposes", sa.String(length=64), nullable=False),
        sa.Column("granted_by", sa.String(length=255), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("consent_id"),
    )
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consents_patient_id"), ["patient_id"], unique=False
        )

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
        "idempotency_keys",
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_table(
        "patient_snapshots",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("managing_organization_id", sa.String(length=64), nullable=False),
        sa.Column("merged_into", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "role_assignments",
        sa.Column("assignment_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("assigned_by", sa.String(length=255), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("assignment_id"),
        sa.UniqueConstraint(
            "subject", "role", "organization_id", name="uq_role_assignments"
        ),
    )
    # The single head row exists from the start, so that concurrent first
    # appends lock it (SELECT ... FOR UPDATE) instead of racing to insert it.
    head = sa.table(
        "audit_head",
        sa.column("id", sa.Integer),
        sa.column("last_sequence", sa.BigInteger),
        sa.column("last_hash", sa.String),
    )
    op.bulk_insert(head, [{"id": 1, "last_sequence": 0, "last_hash": "0" * 64}])


def downgrade() -> None:
    op.drop_table("role_assignments")
    op.drop_table("patient_snapshots")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("hin_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_outbox_pending")
        batch_op.drop_index("ix_hin_outbox_created_at")

    op.drop_table("hin_outbox")
    with op.batch_alter_table("hin_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_inbox_applied_at")

    op.drop_table("hin_inbox")
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consents_patient_id"))

    op.drop_table("consents")
    with op.batch_alter_table("care_relationships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_care_relationships_source_id"))
        batch_op.drop_index("ix_care_relationships_patient")

    op.drop_table("care_relationships")
    with op.batch_alter_table("break_glass_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_break_glass_patient")

    op.drop_table("break_glass_grants")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_records_trace_id"))
        batch_op.drop_index("ix_audit_records_patient")

    op.drop_table("audit_records")
    op.drop_table("audit_head")
