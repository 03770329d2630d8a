"""Transactional billing operations: each runs inside one database transaction.

Every function takes the session of the caller's transaction and writes its
rows and outbox events through it, so a state change and its event commit
together or not at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import uuid_utils
from google.protobuf.message import Message
from sqlmodel import Session, select

from hin.billing.v1 import events_pb2 as events
from hin.common.v1 import types_pb2 as types
from mesh.runtime.errors import FieldViolation
from svc_billing import convert, domain, store
from svc_billing.errors import (
    ChargeNotFound,
    ClaimNotFound,
    IdempotencyKeyReused,
    InvalidPayment,
    InvalidState,
    InvoiceNotFound,
    UnpricedService,
    check_version,
)

logger = logging.getLogger(__name__)


class OutboxWriter(Protocol):
    def add(
        self, session: Any, event: Message, *, key: str, subject: str = ""
    ) -> str: ...


def new_id() -> str:
    """Return a new opaque id (UUIDv7, so ids sort by creation time)."""
    return str(uuid_utils.uuid7())


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(request: Message) -> str:
    """Hash a request without its idempotency key, to spot a reused key."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")  # type: ignore[arg-type]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_replay(kind: str, key: str, stored_hash: str, request_hash: str) -> None:
    """Raise IdempotencyKeyReused when a key comes back with another request."""
    if stored_hash and request_hash and stored_hash != request_hash:
        raise IdempotencyKeyReused(
            f"idempotency key {key} was first used for a different {kind} "
            "request; use a new key for a new request",
            reason="IDEMPOTENCY_KEY_REUSED",
        )


def event_context(causation_id: str = "") -> types.EventContext:
    """Build the context of a new event; the outbox fills id, time and actor."""
    return types.EventContext(causation_id=causation_id)


# Charges -------------------------------------------------------------------


@dataclass(frozen=True)
class ChargeInput:
    """Facts of one charge to post, from a request or from an event."""

    patient_id: str
    encounter_id: str
    system: str
    code: str
    display: str
    quantity: int
    service_date: dt.datetime
    #: Unit price given by the caller instead of the price list's.
    unit_price: types.Money | None = None
    source_event_id: str = ""
    #: What the charge is for, such as "labs.result:<id>"; one charge each.
    source_ref: str = ""
    idempotency_key: str = ""
    request_hash: str = ""


def post_charge(
    session: Session, outbox: OutboxWriter, item: ChargeInput
) -> store.ChargeRow:
    """Post one charge and its ChargePosted event; a replay returns the first.

    Raises:
        UnpricedService: the code has no price on the service date, or a
            given unit price is in another currency than the price list's.
    """
    if item.source_event_id:
        existing = store.charge_by_event(session, item.source_event_id)
        if existing is not None:
            return existing
    if item.source_ref:
        existing = store.charge_by_ref(session, item.source_ref)
        if existing is not None:
            logger.info(
                "already charged",
                extra={
                    "charge_id": existing.charge_id,
                    "event_id": item.source_event_id,
                },
            )
            return existing
    if item.idempotency_key:
        replay = session.exec(
            select(store.ChargeRow).where(
                store.ChargeRow.idempotency_key == item.idempotency_key
            )
        ).first()
        if replay is not None:
            check_replay("PostCharge", item.idempotency_key, replay.request_hash,
                         item.request_hash)
            return replay

    price = resolve_price(session, item)
    unit = price.unit_minor if item.unit_price is None else item.unit_price.minor_units
    patient_id = store.resolve_patient(session, item.patient_id)
    row = store.ChargeRow(
        charge_id=new_id(),
        patient_id=patient_id,
        encounter_id=item.encounter_id,
        system=item.system,
        code=item.code,
        display=item.display or price.display,
        quantity=item.quantity,
        currency=price.currency,
        unit_minor=unit,
        amount_minor=unit * item.quantity,
        source_event_id=item.source_event_id or None,
        source_ref=item.source_ref or None,
        idempotency_key=item.idempotency_key or None,
        request_hash=item.request_hash,
        service_date=item.service_date,
        posted_at=now_utc(),
    )
    session.add(row)
    # Flush now so a second charge for the same event or key fails on its
    # unique constraint inside this transaction, before the event is written.
    session.flush()
    outbox.add(
        session,
        events.ChargePosted(
            context=event_context(item.source_event_id),
            charge_id=row.charge_id,
            patient_id=row.patient_id,
            encounter_id=row.encounter_id,
            service=types.Coding(system=row.system, code=row.code, display=row.display),
            amount=convert.money(row.currency, row.amount_minor),
            quantity=row.quantity,
            source_event_id=item.source_event_id,
            service_date=convert.timestamp(row.service_date),
        ),
        key=row.patient_id,
        subject=row.charge_id,
    )
    return row


def resolve_price(session: Session, item: ChargeInput) -> domain.PriceEntry:
    """Find the price of a charge's code on its service date, or raise."""
    day = item.service_date.astimezone(dt.UTC).date()
    price = store.price_on(session, item.system, item.code, day)
    if price is None:
        raise UnpricedService(
            f"no price for {item.system}|{item.code} on {day}; add it with "
            "SetPrice, then post the charge again",
            violations=[
                FieldViolation(
                    "service.code",
                    f"{item.system}|{item.code} has no price on {day}",
                )
            ],
            reason="UNPRICED_SERVICE",
        )
    if item.unit_price is not None and item.unit_price.currency != price.currency:
        raise UnpricedService(
            f"unit price is in {item.unit_price.currency} but the price list "
            f"prices {item.code} in {price.currency}",
            violations=[
                FieldViolation(
                    "unit_price.currency", f"must be {price.currency}, the price "
                    "list's currency"
                )
            ],
            reason="CURRENCY_MISMATCH",
        )
    return price


def load_charge(session: Session, charge_id: str) -> store.ChargeRow:
    row = session.get(store.ChargeRow, charge_id)
    if row is None:
        raise ChargeNotFound(
            f"charge {charge_id} not found; list the patient's charges to find "
            "its id",
            reason="CHARGE_NOT_FOUND",
        )
    return row


def reverse_charge(
    session: Session,
    outbox: OutboxWriter,
    *,
    charge_id: str,
    reason: str,
    expected_version: int,
) -> store.ChargeRow:
    """Reverse an unbilled charge and publish ChargeReversed."""
    row = load_charge(session, charge_id)
    check_version("charge", charge_id, row.version, expected_version)
    if row.status != "unbilled":
        raise InvalidState(
            f"charge {charge_id} is {row.status}; only an unbilled charge can be "
            "reversed (void its invoice first)",
            reason="CHARGE_NOT_REVERSIBLE",
        )
    row.status = "reversed"
    row.reversal_reason = reason
    row.version += 1
    session.add(row)
    outbox.add(
        session,
        events.ChargeReversed(
            context=event_context(),
            charge_id=row.charge_id,
            patient_id=row.patient_id,
            amount=convert.money(row.currency, row.amount_minor),
            reason=reason,
        ),
        key=row.patient_id,
        subject=row.charge_id,
    )
    return row


# Invoices ------------------------------------------------------------------


def issue_invoice(
    session: Session,
    outbox: OutboxWriter,
    *,
    patient_id: str,
    encounter_id: str,
    vat_basis_points: int,
    idempotency_key: str,
    request_hash: str,
) -> store.InvoiceRow:
    """Invoice the unbilled charges and publish InvoiceIssued.

    The policy in force on the earliest charge's service date covers the
    invoice; without one the patient is responsible for everything.
    """
    if idempotency_key:
        replay = session.exec(
            select(store.InvoiceRow).where(
                store.InvoiceRow.idempotency_key == idempotency_key
            )
        ).first()
        if replay is not None:
            check_replay("IssueInvoice", idempotency_key, replay.request_hash,
                         request_hash)
            return replay

    patient_id = store.resolve_patient(session, patient_id)
    charges = store.unbilled_charges(session, patient_id, encounter_id)
    if not charges:
        raise InvalidState(
            f"patient {patient_id} has no unbilled charges"
            + (f" on encounter {encounter_id}" if encounter_id else "")
            + "; post charges before issuing an invoice",
            reason="NOTHING_TO_INVOICE",
        )
    currencies = {charge.currency for charge in charges}
    if len(currencies) > 1:
        raise InvalidState(
            f"unbilled charges of patient {patient_id} are in {sorted(currencies)}; "
            "invoice one encounter at a time so each invoice has one currency",
            reason="MIXED_CURRENCIES",
        )
    currency = currencies.pop()

    # Decide the coverage, then price every line.
    service_date = store.as_utc(min(charge.service_date for charge in charges))
    policy = store.active_policy(session, patient_id, service_date)
    terms = domain.NO_COVERAGE
    if policy is not None and policy.currency == currency:
        used = store.deductible_used(session, policy.policy_id)
        terms = domain.CoverageTerms(
            coverage_basis_points=policy.coverage_basis_points,
            copay_minor=policy.copay_minor,
            deductible_remaining_minor=max(0, policy.deductible_minor - used),
        )
    else:
        policy = None
    covered = [
        charge.amount_minor
        if policy is None or policy_covers(policy, charge.system)
        else None
        for charge in charges
    ]
    lines = price_lines(covered, [c.amount_minor for c in charges],
                        vat_basis_points, terms)

    issued_at = now_utc()
    invoice = store.InvoiceRow(
        invoice_id=new_id(),
        patient_id=patient_id,
        encounter_id=encounter_id,
        currency=currency,
        subtotal_minor=sum(line.amount for line in lines),
        tax_minor=sum(line.tax for line in lines),
        total_minor=sum(line.total for line in lines),
        patient_responsibility_minor=sum(line.share.patient for line in lines),
        payer_responsibility_minor=sum(line.share.payer for line in lines),
        policy_id=policy.policy_id if policy else "",
        payer_id=policy.payer_id if policy else "",
        vat_basis_points=vat_basis_points,
        issued_at=issued_at,
        due_at=issued_at + dt.timedelta(days=domain.INVOICE_DUE_DAYS),
        idempotency_key=idempotency_key or None,
        request_hash=request_hash,
    )
    session.add(invoice)
    for charge, line in zip(charges, lines, strict=True):
        session.add(
            store.InvoiceLineRow(
                invoice_id=invoice.invoice_id,
                charge_id=charge.charge_id,
                system=charge.system,
                code=charge.code,
                display=charge.display,
                amount_minor=line.amount,
                tax_minor=line.tax,
                patient_share_minor=line.share.patient,
                payer_share_minor=line.share.payer,
                deductible_applied_minor=line.share.deductible_applied,
            )
        )
        charge.status = "invoiced"
        charge.invoice_id = invoice.invoice_id
        charge.version += 1
        session.add(charge)
    session.flush()

    outbox.add(
        session,
        events.InvoiceIssued(
            context=event_context(),
            invoice_id=invoice.invoice_id,
            patient_id=patient_id,
            total=convert.money(currency, invoice.total_minor),
            patient_responsibility=convert.money(
                currency, invoice.patient_responsibility_minor
            ),
            payer_responsibility=convert.money(
                currency, invoice.payer_responsibility_minor
            ),
            due_at=convert.timestamp(invoice.due_at),
        ),
        key=patient_id,
        subject=invoice.invoice_id,
    )
    return invoice


def policy_covers(policy: store.PolicyRow, system: str) -> bool:
    systems = policy.covered_systems.split()
    return not systems or system in systems


def price_lines(
    covered: list[int | None],
    amounts: list[int],
    vat_basis_points: int,
    terms: domain.CoverageTerms,
) -> list[domain.LineTotals]:
    """Price covered lines under ``terms`` and the others with no coverage.

    ``covered`` contains each line's amount when the policy covers it, else
    None.
    """
    covered_amounts = [amount for amount in covered if amount is not None]
    covered_lines = iter(
        domain.price_invoice(
            covered_amounts, vat_basis_points=vat_basis_points, terms=terms
        )
    )
    lines: list[domain.LineTotals] = []
    for amount, cover in zip(amounts, covered, strict=True):
        if cover is None:
            lines.extend(
                domain.price_invoice(
                    [amount],
                    vat_basis_points=vat_basis_points,
                    terms=domain.NO_COVERAGE,
                )
            )
        else:
            lines.append(next(covered_lines))
    return lines


def load_invoice(session: Session, invoice_id: str) -> store.InvoiceRow:
    row = session.get(store.InvoiceRow, invoice_id)
    if row is None:
        raise InvoiceNotFound(
            f"invoice {invoice_id} not found; list the patient's invoices to "
            "find its id",
            reason="INVOICE_NOT_FOUND",
        )
    return row


def void_invoice(
    session: Session, *, invoice_id: str, reason: str, expected_version: int
) -> store.InvoiceRow:
    """Void an issued invoice with no payments or claims; free its charges."""
    row = load_invoice(session, invoice_id)
    check_version("invoice", invoice_id, row.version, expected_version)
    payment = session.exec(
        select(store.PaymentRow).where(store.PaymentRow.invoice_id == invoice_id)
    ).first()
    if row.status != "issued" or payment is not None:
        raise InvalidState(
            f"invoice {invoice_id} is {row.status}"
            + (f" with payment {payment.payment_id}" if payment else "")
            + "; only an issued invoice without payments can be voided",
            reason="INVOICE_NOT_VOIDABLE",
        )

    claim = session.exec(
        select(store.ClaimRow).where(
            store.ClaimRow.invoice_id == invoice_id,
            store.ClaimRow.status != "denied",
        )
    ).first()
    if claim is not None:
        raise InvalidState(
            f"invoice {invoice_id} has claim {claim.claim_id} in status "
            f"{claim.status}; only an invoice without a live claim can be voided",
            reason="INVOICE_HAS_CLAIM",
        )

    for charge in session.exec(
        select(store.ChargeRow).where(store.ChargeRow.invoice_id == invoice_id)
    ):
        charge.status = "unbilled"
        charge.invoice_id = None
        charge.version += 1
        session.add(charge)
    row.status = "void"
    row.void_reason = reason
    row.version += 1
    session.add(row)
    return row


# Payments ------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentInput:
    patient_id: str
    payer_id: str
    invoice_id: str
    amount: types.Money
    method: str
    idempotency_key: str
    request_hash: str


def record_payment(
    session: Session, outbox: OutboxWriter, item: PaymentInput
) -> tuple[store.PaymentRow, int]:
    """Record a payment and publish PaymentReceived; a replay returns the first.

    Returns:
        The payment and the patient amount still owed on its invoice.
    """
    replay = session.exec(
        select(store.PaymentRow).where(
            store.PaymentRow.idempotency_key == item.idempotency_key
        )
    ).first()
    if replay is not None:
        check_replay("RecordPayment", item.idempotency_key, replay.request_hash,
                     item.request_hash)
        return replay, invoice_balance(session, replay.invoice_id)

    patient_id = store.resolve_patient(session, item.patient_id)
    invoice = None
    if item.invoice_id:
        invoice = load_invoice(session, item.invoice_id)
        check_payment_fits(
            invoice, item, patient_id, payer_paid(session, item.invoice_id)
        )

    row = store.PaymentRow(
        payment_id=new_id(),
        patient_id=patient_id,
        payer_id=item.payer_id,
        invoice_id=item.invoice_id,
        currency=item.amount.currency,
        amount_minor=item.amount.minor_units,
        method=item.method,
        received_at=now_utc(),
        idempotency_key=item.idempotency_key,
        request_hash=item.request_hash,
    )
    session.add(row)
    if invoice is not None and not item.payer_id:
        invoice.patient_paid_minor += item.amount.minor_units
        if invoice.patient_paid_minor >= invoice.patient_responsibility_minor:
            invoice.status = "paid"
        invoice.version += 1
        session.add(invoice)
    session.flush()
    outbox.add(
        session,
        events.PaymentReceived(
            context=event_context(),
            payment_id=row.payment_id,
            patient_id=patient_id,
            payer_id=item.payer_id,
            amount=item.amount,
            invoice_id=item.invoice_id,
            method=item.method,
        ),
        key=patient_id,
        subject=row.payment_id,
    )
    return row, invoice_balance(session, item.invoice_id)


def check_payment_fits(
    invoice: store.InvoiceRow,
    item: PaymentInput,
    patient_id: str,
    payer_paid_minor: int,
) -> None:
    """Reject a payment for another patient's invoice, or one that overpays.

    A payer may pay up to its responsibility on the invoice, which is the
    approved amount once its claim was adjudicated.
    """
    violations: list[FieldViolation] = []
    if invoice.patient_id != patient_id:
        violations.append(
            FieldViolation("invoice_id", f"invoice {invoice.invoice_id} belongs "
                           "to another patient")
        )
    if item.amount.currency != invoice.currency:
        violations.append(
            FieldViolation("amount.currency", f"must be {invoice.currency}, the "
                           "invoice's currency")
        )
    if invoice.status == "void":
        violations.append(
            FieldViolation("invoice_id", f"invoice {invoice.invoice_id} is void")
        )
    if item.payer_id and item.payer_id != invoice.payer_id:
        violations.append(
            FieldViolation("payer_id", f"invoice {invoice.invoice_id} is covered "
                           f"by payer {invoice.payer_id or '(none)'}")
        )
    if item.payer_id:
        owed = invoice.payer_responsibility_minor - payer_paid_minor
        debtor = "payer"
    else:
        owed = invoice.patient_responsibility_minor - invoice.patient_paid_minor
        debtor = "patient"
    if item.amount.minor_units > owed:
        violations.append(
            FieldViolation("amount.minor_units", f"exceeds the {owed} minor units "
                           f"the {debtor} still owes on the invoice")
        )
    if violations:
        raise InvalidPayment(
            f"payment does not fit invoice {invoice.invoice_id}",
            violations=violations,
            reason="PAYMENT_MISMATCH",
        )


def payer_paid(session: Session, invoice_id: str) -> int:
    """Sum the payer payments recorded against an invoice."""
    rows = session.exec(
        select(store.PaymentRow).where(
            store.PaymentRow.invoice_id == invoice_id, store.PaymentRow.payer_id != ""
        )
    )
    return sum(row.amount_minor for row in rows)


def invoice_balance(session: Session, invoice_id: str) -> int:
    """Return the patient amount still owed on an invoice; 0 without one."""
    if not invoice_id:
        return 0
    row = session.get(store.InvoiceRow, invoice_id)
    if row is None or row.status == "void":
        return 0
    return max(0, row.patient_responsibility_minor - row.patient_paid_minor)


# Claims --------------------------------------------------------------------


def load_claim(session: Session, claim_id: str) -> store.ClaimRow:
    row = session.get(store.ClaimRow, claim_id)
    if row is None:
        raise ClaimNotFound(
            f"claim {claim_id} not found; list the patient's claims to find its id",
            reason="CLAIM_NOT_FOUND",
        )
    return row

