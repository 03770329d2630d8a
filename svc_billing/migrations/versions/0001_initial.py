"""Create the billing tables, with the outbox and inbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 16:55:46.098823
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
        "billing_adjudications",
        sa.Column("adjudication_id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("approved_minor", sa.BigInteger(), nullable=False),
        sa.Column("patient_responsibility_minor", sa.BigInteger(), nullable=False),
        sa.Column("reasons", sa.String(), nullable=False),
        sa.Column("adjudicated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_id", sa.String(), nullable=True),
        sa.Column("source_payment", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("adjudication_id"),
        sa.UniqueConstraint("source_id"),
    )
    with op.batch_alter_table("billing_adjudications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_adjudications_claim_id"), ["claim_id"], unique=False
        )

    op.create_table(
        "billing_charges",
        sa.Column("charge_id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("encounter_id", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("display", sa.String(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("unit_minor", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("source_event_id", sa.String(), nullable=True),
        sa.Column("source_ref", sa.String(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.Column("service_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("invoice_id", sa.String(), nullable=True),
        sa.Column("reversal_reason", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("charge_id"),
        sa.UniqueConstraint("idempotency_key"),
        sa.UniqueConstraint("source_event_id"),
        sa.UniqueConstraint("source_ref"),
    )
    with op.batch_alter_table("billing_charges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_charges_encounter_id"),
            ["encounter_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_billing_charges_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_charges_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "billing_claim_lines",
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("display", sa.String(), nullable=False),
        sa.Column("submitted_minor", sa.BigInteger(), nullable=False),
        sa.Column("approved_minor", sa.BigInteger(), nullable=True),
        sa.Column("charge_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("line_id"),
    )
    with op.batch_alter_table("billing_claim_lines", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_claim_lines_claim_id"), ["claim_id"], unique=False
        )

    op.create_table(
        "billing_claims",
        sa.Column("claim_id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("invoice_id", sa.String(), nullable=False),
        sa.Column("policy_id", sa.String(), nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("approved_minor", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("service_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_id", sa.String(), nullable=True),
        sa.Column("source_total", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("claim_id"),
        sa.UniqueConstraint("idempotency_key"),
        sa.UniqueConstraint("source_id"),
    )
    with op.batch_alter_table("billing_claims", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_claims_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_claims_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_claims_payer_id"), ["payer_id"], unique=False
        )

    op.create_table(
        "billing_invoice_lines",
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.String(), nullable=False),
        sa.Column("charge_id", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("display", sa.String(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("tax_minor", sa.BigInteger(), nullable=False),
        sa.Column("patient_share_minor", sa.BigInteger(), nullable=False),
        sa.Column("payer_share_minor", sa.BigInteger(), nullable=False),
        sa.Column("deductible_applied_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("line_id"),
    )
    with op.batch_alter_table("billing_invoice_lines", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_invoice_lines_invoice_id"),
            ["invoice_id"],
            unique=False,
        )

    op.create_table(
        "billing_invoices",
        sa.Column("invoice_id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("encounter_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("subtotal_minor", sa.BigInteger(), nullable=False),
        sa.Column("tax_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("patient_responsibility_minor", sa.BigInteger(), nullable=False),
        sa.Column("payer_responsibility_minor", sa.BigInteger(), nullable=False),
        sa.Column("patient_paid_minor", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.String(), nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("vat_basis_points", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("void_reason", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("invoice_id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("billing_invoices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_invoices_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "billing_patients",
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("organization_id", sa.String(), nullable=False),
        sa.Column("deceased", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("merged_into", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "billing_payments",
        sa.Column("receipt_number", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("invoice_id", sa.String(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=False),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("receipt_number"),
        sa.UniqueConstraint("idempotency_key"),
        sa.UniqueConstraint("payment_id"),
    )
    with op.batch_alter_table("billing_payments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_payments_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_payments_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_payments_payer_id"), ["payer_id"], unique=False
        )

    op.create_table(
        "billing_policies",
        sa.Column("policy_id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("member_id", sa.String(), nullable=False),
        sa.Column("plan_code", sa.String(), nullable=False),
        sa.Column("coverage_basis_points", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("copay_minor", sa.BigInteger(), nullable=False),
        sa.Column("deductible_minor", sa.BigInteger(), nullable=False),
        sa.Column("benefit_limit_minor", sa.BigInteger(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("covered_systems", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("source_id", sa.String(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("policy_id"),
        sa.UniqueConstraint("idempotency_key"),
        sa.UniqueConstraint("source_id"),
    )
    with op.batch_alter_table("billing_policies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_policies_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_policies_payer_id"), ["payer_id"], unique=False
        )

    op.create_table(
        "billing_prices",
        sa.Column("price_id", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("display", sa.String(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("unit_minor", sa.BigInteger(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("effective_to", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("price_id"),
        sa.UniqueConstraint("system", "code", "effective_from"),
    )
    with op.batch_alter_table("billing_prices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_prices_code"), ["code"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_prices_system"), ["system"], unique=False
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


def downgrade() -> None:
    with op.batch_alter_table("hin_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_outbox_pending")
        batch_op.drop_index("ix_hin_outbox_created_at")

    op.drop_table("hin_outbox")
    with op.batch_alter_table("hin_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hin_inbox_applied_at")

    op.drop_table("hin_inbox")
    with op.batch_alter_table("billing_prices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_prices_system"))
        batch_op.drop_index(batch_op.f("ix_billing_prices_code"))

    op.drop_table("billing_prices")
    with op.batch_alter_table("billing_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_policies_payer_id"))
        batch_op.drop_index(batch_op.f("ix_billing_policies_patient_id"))

    op.drop_table("billing_policies")
    with op.batch_alter_table("billing_payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_payments_payer_id"))
        batch_op.drop_index(batch_op.f("ix_billing_payments_patient_id"))
        batch_op.drop_index(batch_op.f("ix_billing_payments_invoice_id"))

    op.drop_table("billing_payments")
    op.drop_table("billing_patients")
    with op.batch_alter_table("billing_invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_invoices_patient_id"))

    op.drop_table("billing_invoices")
    with op.batch_alter_table("billing_invoice_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_invoice_lines_invoice_id"))

    op.drop_table("billing_invoice_lines")
    with op.batch_alter_table("billing_claims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_claims_payer_id"))
        batch_op.drop_index(batch_op.f("ix_billing_claims_patient_id"))
        batch_op.drop_index(batch_op.f("ix_billing_claims_invoice_id"))

    op.drop_table("billing_claims")
    with op.batch_alter_table("billing_claim_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_claim_lines_claim_id"))

    op.drop_table("billing_claim_lines")
    with op.batch_alter_table("billing_charges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_charges_patient_id"))
        batch_op.drop_index(batch_op.f("ix_billing_charges_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_billing_charges_encounter_id"))

    op.drop_table("billing_charges")
    with op.batch_alter_table("billing_adjudications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_adjudications_claim_id"))

    op.drop_table("billing_adjudications")
