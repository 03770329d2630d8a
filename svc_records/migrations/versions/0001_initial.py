"""Create the records tables, with the outbox and inbox.

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
        "clinical_entries",
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_key", sa.String(length=255), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("fhir_json", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entry_id"),
        sa.UniqueConstraint("kind", "source_key", name="uq_clinical_entries_source"),
    )
    with op.batch_alter_table("clinical_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_clinical_entries_patient", ["patient_id", "kind"], unique=False
        )

    op.create_table(
        "directory_entries",
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("identifier_system", sa.String(length=255), nullable=False),
        sa.Column("identifier_value", sa.String(length=255), nullable=False),
        sa.Column("fhir_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entry_id"),
        sa.UniqueConstraint(
            "resource_type",
            "identifier_system",
            "identifier_value",
            name="uq_directory_entries_identifier",
        ),
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
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method", "key"),
    )
    op.create_table(
        "patient_identifiers",
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("system", "value"),
    )
    with op.batch_alter_table("patient_identifiers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patient_identifiers_patient_id"),
            ["patient_id"],
            unique=False,
        )

    op.create_table(
        "patients",
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("merged_into", sa.String(length=36), nullable=True),
        sa.Column("birth_date", sa.String(length=10), nullable=False),
        sa.Column("gender", sa.String(length=24), nullable=False),
        sa.Column("deceased", sa.Boolean(), nullable=False),
        sa.Column("managing_organization_id", sa.String(length=64), nullable=False),
        sa.Column("demographics", sa.LargeBinary(), nullable=False),
        sa.Column("search_names", sa.Text(), nullable=False),
        sa.Column("search_phones", sa.Text(), nullable=False),
        sa.Column("fhir_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patients_birth_date"), ["birth_date"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_patients_status"), ["status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_status"))
        batch_op.drop_index(batch_op.f("ix_patients_birth_date"))

    op.drop_table("patients")
    with op.batch_alter_table("patient_identifiers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_identifiers_patient_id"))

    op.drop_table("patient_identifiers")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("hin_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_outbox_pending")
        batch_op.drop_index("ix_hin_outbox_created_at")

    op.drop_table("hin_outbox")
    with op.batch_alter_table("hin_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_inbox_applied_at")

    op.drop_table("hin_inbox")
    op.drop_table("directory_entries")
    with op.batch_alter_table("clinical_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_clinical_entries_patient")

    op.drop_table("clinical_entries")
