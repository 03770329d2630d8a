"""Billing tables and the queries the servicer and handlers share."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import BigInteger, UniqueConstraint, func
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select

from mesh.runtime.events.tables import add_event_tables
from svc_billing import domain

logger = logging.getLogger(__name__)


class BillingBase(SQLModel, registry=registry()):
    pass


def _money() -> int:
    """Declare an int64 minor-units column that defaults to zero."""
    return Field(default=0, sa_type=BigInteger)  # type: ignore[no-any-return]


class PriceRow(BillingBase, table=True):
    __tablename__ = "billing_prices"
    __table_args__ = (UniqueConstraint("system", "code", "effective_from"),)

    price_id: str = Field(primary_key=True)
    system: str = Field(index=True)
    code: str = Field(index=True)
    display: str = ""
    currency: str
    unit_minor: int = _money()
    effective_from: dt.date
    effective_to: dt.date | None = None

    def to_domain(self) -> domain.PriceEntry:
        return domain.PriceEntry(
            system=self.system,
            code=self.code,
            currency=self.currency,
            unit_minor=self.unit_minor,
            effective_from=self.effective_from,
            effective_to=self.effective_to,
            display=self.display,
        )


class PatientRow(BillingBase, table=True):
    """Local copy of the facts billing needs about a patient (no demographics)."""

    __tablename__ = "billing_patients"

    patient_id: str = Field(primary_key=True)
    organization_id: str = ""
    deceased: bool = False
    version: int = 0
    #: Surviving patient id once this record was merged into another.
    merged_into: str | None = None


class ChargeRow(BillingBase, table=True):
    __tablename__ = "billing_charges"

    charge_id: str = Field(primary_key=True)
    patient_id: str = Field(index=True)
    encounter_id: str = Field(default="", index=True)
    system: str
    code: str
    display: str = ""
    quantity: int = 1
    currency: str
    unit_minor: int = _money()
    amount_minor: int = _money()
    status: str = "unbilled"
    #: One charge per causing event, even when the inbox is bypassed.
    source_event_id: str | None = Field(default=None, unique=True)
    #: One charge per charged thing (a lab result, an appointment), so that a
    #: preliminary and then a final publication of one result charge once.
    source_ref: str | None = Field(default=None, unique=True)
    idempotency_key: str | None = Field(default=None, unique=True)
    request_hash: str = ""
    service_date: dt.datetime
    posted_at: dt.datetime
    invoice_id: str | None = Field(default=None, index=True)
    reversal_reason: str = ""
    version: int = 1


class InvoiceRow(BillingBase, table=True):
    __tablename__ = "billing_invoices"

    invoice_id: str = Field(primary_key=True)
    patient_id: str = Field(index=True)
    encounter_id: str = ""
    status: str = "issued"
    currency: str
    subtotal_minor: int = _money()
    tax_minor: int = _money()
    total_minor: int = _money()
    patient_responsibility_minor: int = _money()
    payer_responsibility_minor: int = _money()
    patient_paid_minor: int = _money()
    policy_id: str = ""
    payer_id: str = ""
    vat_basis_points: int = 0
    issued_at: dt.datetime
    due_at: dt.datetime
    void_reason: str = ""
    idempotency_key: str | None = Field(default=None, unique=True)
    request_hash: str = ""
    version: int = 1


class InvoiceLineRow(BillingBase, table=True):
    __tablename__ = "billing_invoice_lines"

    line_id: int | None = Field(default=None, primary_key=True)
    invoice_id: str = Field(index=True)
    charge_id: str
    system: str
    code: str
    display: str = ""
    amount_minor: int = _money()
    tax_minor: int = _money()
    patient_share_minor: int = _money()
    payer_share_minor: int = _money()
    deductible_applied_minor: int = _money()


class PolicyRow(BillingBase, table=True):
    __tablename__ = "billing_policies"

    policy_id: str = Field(primary_key=True)
    patient_id: str = Field(index=True)
    payer_id: str = Field(index=True)
    member_id: str = ""
    plan_code: str = ""
    coverage_basis_points: int = 0
    currency: str = domain.DEFAULT_CURRENCY
    copay_minor: int = _money()
    deductible_minor: int = _money()
    benefit_limit_minor: int = _money()
    valid_from: dt.datetime
    valid_to: dt.datetime | None = None
    #: Space-separated coding systems; empty covers every system.
    covered_systems: str = ""
    source: str = "manual"
    #: Resource id in the FHIR bundle the policy came from.
    source_id: str | None = Field(default=None, unique=True)
    idempotency_key: str | None = Field(default=None, unique=True)
    request_hash: str = ""


class ClaimRow(BillingBase, table=True):
    __tablename__ = "billing_claims"

    claim_id: str = Field(primary_key=True)
    patient_id: str = Field(index=True)
    invoice_id: str = Field(default="", index=True)
    policy_id: str = ""
    payer_id: str = Field(default="", index=True)
    status: str = "draft"
    currency: str
    total_minor: int = _money()
    approved_minor: int = _money()
    attempt: int = 0
    service_date: dt.datetime
    created_at: dt.datetime
    #: Claim id in the system a historical claim was imported from.
    source_id: str | None = Field(default=None, unique=True)
    #: Claim total exactly as the source wrote it (a decimal string).
    source_total: str = ""
    note: str = ""
    idempotency_key: str | None = Field(default=None, unique=True)
    request_hash: str = ""
    version: int = 1


class ClaimLineRow(BillingBase, table=True):
    __tablename__ = "billing_claim_lines"

    line_id: int | None = Field(default=None, primary_key=True)
    claim_id: str = Field(index=True)
    sequence: int
    system: str = ""
    code: str = ""
    display: str = ""
    submitted_minor: int = _money()
    approved_minor: int | None = Field(default=None, sa_type=BigInteger)
    charge_id: str = ""


class AdjudicationRow(BillingBase, table=True):
    __tablename__ = "billing_adjudications"

    adjudication_id: int | None = Field(default=None, primary_key=True)
    claim_id: str = Field(index=True)
    attempt: int
    outcome: str
    approved_minor: int = _money()
    patient_responsibility_minor: int = _money()
    #: Reasons separated by newlines.
    reasons: str = ""
    adjudicated_at: dt.datetime
    #: ExplanationOfBenefit id for an imported adjudication.
    source_id: str | None = Field(default=None, unique=True)
    #: Payment amount exactly as the source wrote it (a decimal string).
    source_payment: str = ""


class PaymentRow(BillingBase, table=True):
    __tablename__ = "billing_payments"

    #: Also the receipt number: unique and increasing in one database.
    receipt_number: int | None = Field(default=None, primary_key=True)
    payment_id: str = Field(unique=True)
    patient_id: str = Field(index=True)
    payer_id: str = Field(default="", index=True)
    invoice_id: str = Field(default="", index=True)
    currency: str
    amount_minor: int = _money()
    method: str = ""
    received_at: dt.datetime
    idempotency_key: str = Field(unique=True)
    request_hash: str = ""


add_event_tables(BillingBase.metadata)


# Queries -------------------------------------------------------------------


def prices_for(session: Session, system: str, code: str) -> list[PriceRow]:
    """Return every price entry of one code, oldest first."""
    statement = (
        select(PriceRow)
        .where(PriceRow.system == system, PriceRow.code == code)
        .order_by(col(PriceRow.effective_from))
    )
    return list(session.exec(statement))


def price_on(
    session: Session, system: str, code: str, day: dt.date
) -> domain.PriceEntry | None:
    """Return the price of a code in effect on ``day``, or None."""
    rows = prices_for(session, system, code)
    return domain.find_price((row.to_domain() for row in rows), day)


def price_currency(session: Session) -> str:
    """Return the currency of the price list (the first entry's)."""
    row = session.exec(select(PriceRow.currency).limit(1)).first()
    return row or domain.DEFAULT_CURRENCY


def resolve_patient(session: Session, patient_id: str) -> str:
    """Follow merge links from ``patient_id`` to the surviving patient id."""
    seen: set[str] = set()
    current = patient_id
    while current not in seen:
        seen.add(current)
        row = session.get(PatientRow, current)
        if row is None or not row.merged_into:
            return current
        current = row.merged_into
    return current


def charge_by_event(session: Session, event_id: str) -> ChargeRow | None:
    statement = select(ChargeRow).where(ChargeRow.source_event_id == event_id)
    return session.exec(statement).first()


def charge_by_ref(session: Session, source_ref: str) -> ChargeRow | None:
    statement = select(ChargeRow).where(ChargeRow.source_ref == source_ref)
    return session.exec(statement).first()


def count_rows(session: Session, model: type[BillingBase]) -> int:
    """Count every row of a table."""
    return int(session.exec(select(func.count()).select_from(model)).one())


def unbilled_charges(
    session: Session, patient_id: str, encounter_id: str
) -> list[ChargeRow]:
    """Return a patient's unbilled charges, of one encounter when given."""
    statement = select(ChargeRow).where(
        ChargeRow.patient_id == patient_id, ChargeRow.status == "unbilled"
    )
    if encounter_id:
        statement = statement.where(ChargeRow.encounter_id == encounter_id)
    return list(session.exec(statement.order_by(col(ChargeRow.posted_at))))


def invoice_lines(session: Session, invoice_id: str) -> list[InvoiceLineRow]:
    statement = (
        select(InvoiceLineRow)
        .where(InvoiceLineRow.invoice_id == invoice_id)
        .order_by(col(InvoiceLineRow.line_id))
    )
    return list(session.exec(statement))


def claim_lines(session: Session, claim_id: str) -> list[ClaimLineRow]:
    statement = (
        select(ClaimLineRow)
        .where(ClaimLineRow.claim_id == claim_id)
        .order_by(col(ClaimLineRow.sequence))
    )
    return list(session.exec(statement))


def adjudications(session: Session, claim_id: str) -> list[AdjudicationRow]:
    statement = (
        select(AdjudicationRow)
        .where(AdjudicationRow.claim_id == claim_id)
        .order_by(col(AdjudicationRow.adjudication_id))
    )
    return list(session.exec(statement))


def deductible_used(session: Session, policy_id: str) -> int:
    """Sum the deductible applied on the policy's invoices that are not void."""
    statement = (
        select(func.coalesce(func.sum(InvoiceLineRow.deductible_applied_minor), 0))
        .join(InvoiceRow, col(InvoiceRow.invoice_id) == InvoiceLineRow.invoice_id)
        .where(InvoiceRow.policy_id == policy_id, InvoiceRow.status != "void")
    )
    return int(session.exec(statement).one())


def approved_on_policy(session: Session, policy_id: str) -> int:
    """Sum what payers approved on the policy's claims so far."""
    statement = select(
        func.coalesce(func.sum(ClaimRow.approved_minor), 0)
    ).where(ClaimRow.policy_id == policy_id)
    return int(session.exec(statement).one())


def policies_of(session: Session, patient_id: str) -> list[PolicyRow]:
    statement = (
        select(PolicyRow)
        .where(PolicyRow.patient_id == patient_id)
        .order_by(col(PolicyRow.valid_from))
    )
    return list(session.exec(statement))


def active_policy(
    session: Session, patient_id: str, moment: dt.datetime, system: str = ""
) -> PolicyRow | None:
    """Return the patient's policy in force at ``moment`` that covers ``system``.

    When several apply, the one with the highest coverage wins.
    """
    candidates = [
        row
        for row in policies_of(session, patient_id)
        if policy_terms(row, 0).valid_at(moment)
        and (not system or policy_terms(row, 0).covers_system(system))
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda row: row.coverage_basis_points)


def policy_terms(row: PolicyRow, approved_so_far: int) -> domain.PolicyTerms:
    """Build the domain view of a policy row."""
    return domain.PolicyTerms(
        policy_id=row.policy_id,
        payer_id=row.payer_id,
        member_id=row.member_id,
        valid_from=as_utc(row.valid_from),
        valid_to=as_utc(row.valid_to) if row.valid_to else None,
        covered_systems=tuple(row.covered_systems.split()),
        benefit_limit_minor=row.benefit_limit_minor,
        approved_so_far_minor=approved_so_far,
    )


def as_utc(moment: dt.datetime) -> dt.datetime:
    """Attach UTC to a naive timestamp read back from SQLite."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)
