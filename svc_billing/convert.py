"""Translate billing rows into their protobuf messages and back."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from hin.billing.v1 import billing_service_pb2 as pb
from hin.billing.v1 import events_pb2 as events
from hin.common.v1 import types_pb2 as types
from svc_billing import domain, store

CHARGE_STATUS = {
    "unbilled": pb.CHARGE_STATUS_UNBILLED,
    "invoiced": pb.CHARGE_STATUS_INVOICED,
    "reversed": pb.CHARGE_STATUS_REVERSED,
}
INVOICE_STATUS = {
    "issued": pb.INVOICE_STATUS_ISSUED,
    "paid": pb.INVOICE_STATUS_PAID,
    "void": pb.INVOICE_STATUS_VOID,
}
CLAIM_STATUS = {
    "draft": pb.CLAIM_STATUS_DRAFT,
    "submitted": pb.CLAIM_STATUS_SUBMITTED,
    "approved": pb.CLAIM_STATUS_APPROVED,
    "partial": pb.CLAIM_STATUS_PARTIAL,
    "denied": pb.CLAIM_STATUS_DENIED,
    "historical": pb.CLAIM_STATUS_HISTORICAL,
}
OUTCOMES = {
    domain.OUTCOME_APPROVED: events.ADJUDICATION_OUTCOME_APPROVED,
    domain.OUTCOME_PARTIAL: events.ADJUDICATION_OUTCOME_PARTIAL,
    domain.OUTCOME_DENIED: events.ADJUDICATION_OUTCOME_DENIED,
}
OUTCOME_NAMES = {number: name for name, number in OUTCOMES.items()}


def money(currency: str, minor_units: int) -> types.Money:
    return types.Money(currency=currency, minor_units=minor_units)


def timestamp(moment: dt.datetime | None) -> Timestamp | None:
    """Convert an aware or naive-UTC datetime to a Timestamp; None stays None."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(store.as_utc(moment))
    return stamp


def to_datetime(stamp: Timestamp) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)


def to_date(value: types.Date) -> dt.date:
    """Convert a protobuf Date; raise ValueError when it is not a real day."""
    return dt.date(value.year, value.month, value.day)


def from_date(day: dt.date | None) -> types.Date | None:
    if day is None:
        return None
    return types.Date(year=day.year, month=day.month, day=day.day)


def price(row: store.PriceRow) -> pb.PriceEntry:
    return pb.PriceEntry(
        price_id=row.price_id,
        service=types.Coding(system=row.system, code=row.code, display=row.display),
        unit_price=money(row.currency, row.unit_minor),
        effective_from=from_date(row.effective_from),
        effective_to=from_date(row.effective_to),
    )


def charge(row: store.ChargeRow) -> pb.Charge:
    return pb.Charge(
        charge_id=row.charge_id,
        patient_id=row.patient_id,
        encounter_id=row.encounter_id,
        service=types.Coding(system=row.system, code=row.code, display=row.display),
        quantity=row.quantity,
        unit_price=money(row.currency, row.unit_minor),
        amount=money(row.currency, row.amount_minor),
        status=CHARGE_STATUS[row.status],
        source_event_id=row.source_event_id or "",
        service_date=timestamp(row.service_date),
        posted_at=timestamp(row.posted_at),
        invoice_id=row.invoice_id or "",
        reversal_reason=row.reversal_reason,
        version=row.version,
    )


def invoice(row: store.InvoiceRow, lines: list[store.InvoiceLineRow]) -> pb.Invoice:
    currency = row.currency
    return pb.Invoice(
        invoice_id=row.invoice_id,
        patient_id=row.patient_id,
        encounter_id=row.encounter_id,
        status=INVOICE_STATUS[row.status],
        lines=[
            pb.InvoiceLine(
                charge_id=line.charge_id,
                service=types.Coding(
                    system=line.system, code=line.code, display=line.display
                ),
                amount=money(currency, line.amount_minor),
                tax=money(currency, line.tax_minor),
                patient_share=money(currency, line.patient_share_minor),
                payer_share=money(currency, line.payer_share_minor),
                deductible_applied=money(currency, line.deductible_applied_minor),
            )
            for line in lines
        ],
        subtotal=money(currency, row.subtotal_minor),
        tax=money(currency, row.tax_minor),
        total=money(currency, row.total_minor),
        patient_responsibility=money(currency, row.patient_responsibility_minor),
        payer_responsibility=money(currency, row.payer_responsibility_minor),
        policy_id=row.policy_id,
        payer_id=row.payer_id,
        vat_rate_basis_points=row.vat_basis_points,
        issued_at=timestamp(row.issued_at),
        due_at=timestamp(row.due_at),
        patient_paid=money(currency, row.patient_paid_minor),
        void_reason=row.void_reason,
        version=row.version,
    )


def policy(row: store.PolicyRow) -> pb.Policy:
    return pb.Policy(
        policy_id=row.policy_id,
        patient_id=row.patient_id,
        payer_id=row.payer_id,
        member_id=row.member_id,
        plan_code=row.plan_code,
        coverage_basis_points=row.coverage_basis_points,
        copay=money(row.currency, row.copay_minor),
        deductible=money(row.currency, row.deductible_minor),
        benefit_limit=money(row.currency, row.benefit_limit_minor),
        period=types.Period(
            start=timestamp(row.valid_from), end=timestamp(row.valid_to)
        ),
        covered_systems=row.covered_systems.split(),
        source=row.source,
    )


def claim(
    row: store.ClaimRow,
    lines: list[store.ClaimLineRow],
    adjudications: list[store.AdjudicationRow],
) -> pb.Claim:
    currency = row.currency
    return pb.Claim(
        claim_id=row.claim_id,
        patient_id=row.patient_id,
        invoice_id=row.invoice_id,
        policy_id=row.policy_id,
        payer_id=row.payer_id,
        status=CLAIM_STATUS[row.status],
        lines=[
            pb.ClaimLine(
                sequence=line.sequence,
                service=types.Coding(
                    system=line.system, code=line.code, display=line.display
                ),
                submitted=money(currency, line.submitted_minor),
                approved=(
                    None
                    if line.approved_minor is None
                    else money(currency, line.approved_minor)
                ),
                charge_id=line.charge_id,
            )
            for line in lines
        ],
        total=money(currency, row.total_minor),
        attempt=row.attempt,
        adjudications=[
            pb.Adjudication(
                attempt=item.attempt,
                outcome=OUTCOMES[item.outcome],
                approved=money(currency, item.approved_minor),
                patient_responsibility=money(
                    currency, item.patient_responsibility_minor
                ),
                reasons=[reason for reason in item.reasons.split("\n") if reason],
                adjudicated_at=timestamp(item.adjudicated_at),
            )
            for item in adjudications
        ],
        source_id=row.source_id or "",
        created_at=timestamp(row.created_at),
        version=row.version,
    )


def receipt_number(row: store.PaymentRow) -> str:
    return f"RCPT-{row.receipt_number:08d}"


def payment(row: store.PaymentRow, invoice_balance: int) -> pb.Payment:
    amount = money(row.currency, row.amount_minor)
    return pb.Payment(
        payment_id=row.payment_id,
        patient_id=row.patient_id,
        payer_id=row.payer_id,
        invoice_id=row.invoice_id,
        amount=amount,
        method=row.method,
        received_at=timestamp(row.received_at),
        receipt=pb.Receipt(
            receipt_number=receipt_number(row),
            payment_id=row.payment_id,
            amount=amount,
            received_at=timestamp(row.received_at),
            invoice_id=row.invoice_id,
            invoice_balance=money(row.currency, invoice_balance),
        ),
    )
