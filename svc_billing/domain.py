"""Billing rules: prices, tax, the patient and payer split, and adjudication.

Every amount here is an ``int`` of minor units (EGP piastres, USD cents).
Percentages are integer basis points (1 % is 100 basis points), so a share
is ``amount * basis_points / 10000`` computed in exact integer arithmetic.

Rounding rule, the only one in billing: a percentage share of an amount is
rounded half up to the minor unit (0.5 piastre goes up), and the other share
is the amount minus the rounded share. The two parts therefore always add up
to the amount. Which side is rounded is fixed per calculation: VAT is rounded
itself, the patient's co-insurance is rounded and the payer gets the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

BASIS_POINTS_PER_WHOLE = 10_000
DEFAULT_CURRENCY = "EGP"
VISIT_TYPE_SYSTEM = "urn:hin:code:visit-type"
LOINC_SYSTEM = "http://loinc.org"
#: Days between issuing an invoice and its due date.
INVOICE_DUE_DAYS = 30


def percent_of(amount: int, basis_points: int) -> int:
    """Compute ``amount * basis_points / 10000``, rounded half up.

    Args:
        amount: Minor units, zero or more.
        basis_points: Share in basis points, 0 to 10000.

    Returns:
        The share in minor units; 0.5 of a minor unit rounds up.
    """
    if amount < 0:
        raise ValueError(f"amount must be zero or more, found {amount}")
    quotient, remainder = divmod(amount * basis_points, BASIS_POINTS_PER_WHOLE)
    if 2 * remainder >= BASIS_POINTS_PER_WHOLE:
        quotient += 1
    return quotient


def parse_rate_basis_points(text: str) -> int:
    """Parse a percentage such as ``"14"`` or ``"2.25"`` into basis points.

    Raises:
        ValueError: The text is not a number from 0 to 100 with at most two
            decimal places.
    """
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"rate {text!r} is not a number") from None
    basis_points = value * 100
    if basis_points != basis_points.to_integral_value() or not 0 <= value <= 100:
        raise ValueError(
            f"rate {text!r} must be a percentage from 0 to 100 with at most two "
            "decimal places"
        )
    return int(basis_points)


def decimal_to_minor_units(value: Decimal, exponent: int = 2) -> int:
    """Convert a decimal amount to minor units, rounding half up.

    Amounts with more decimal places than the currency has (Synthea writes
    values such as 894.264) are rounded half up to the minor unit, the same
    rule as every other share here.
    """
    scaled = value.scaleb(exponent)
    return int(scaled.to_integral_value(rounding="ROUND_HALF_UP"))


@dataclass(frozen=True)
class PriceEntry:
    """One price of one code, valid on ``[effective_from, effective_to)``."""

    system: str
    code: str
    currency: str
    unit_minor: int
    effective_from: dt.date
    effective_to: dt.date | None = None
    display: str = ""

    def applies_on(self, day: dt.date) -> bool:
        """Tell whether the price is in effect on ``day``."""
        if day < self.effective_from:
            return False
        return self.effective_to is None or day < self.effective_to


def find_price(entries: Iterable[PriceEntry], day: dt.date) -> PriceEntry | None:
    """Return the entry in effect on ``day`` with the latest start, if any."""
    matching = [entry for entry in entries if entry.applies_on(day)]
    if not matching:
        return None
    return max(matching, key=lambda entry: entry.effective_from)


@dataclass(frozen=True)
class CoverageTerms:
    """Policy terms that decide the patient's part of one invoice.

    The payer pays ``coverage_basis_points`` of the amount left after the
    deductible and the co-payment, and the patient pays the rest.
    """

    coverage_basis_points: int
    copay_minor: int = 0
    deductible_remaining_minor: int = 0


NO_COVERAGE = CoverageTerms(coverage_basis_points=0)


@dataclass(frozen=True)
class Share:
    """Split of one amount between the patient and the payer."""

    patient: int
    payer: int
    deductible_applied: int = 0


def split_amounts(amounts: Sequence[int], terms: CoverageTerms) -> list[Share]:
    """Split each amount between patient and payer, lines in the given order.

    For each line the patient pays, in this order: what is left of the
    deductible (consumed across lines), then the co-payment, then the
    co-insurance share ``100 % - coverage`` of the rest, rounded half up. The
    payer pays the amount minus the patient's part, so
    ``patient + payer == amount`` on every line.
    """
    deductible_left = terms.deductible_remaining_minor
    shares: list[Share] = []
    for amount in amounts:
        deductible = min(amount, deductible_left)
        deductible_left -= deductible
        after_deductible = amount - deductible
        copay = min(after_deductible, terms.copay_minor)
        rest = after_deductible - copay
        coinsurance = percent_of(
            rest, BASIS_POINTS_PER_WHOLE - terms.coverage_basis_points
        )
        patient = deductible + copay + coinsurance
        shares.append(Share(patient, amount - patient, deductible))
    return shares


@dataclass(frozen=True)
class LineTotals:
    """One invoice line: amount, VAT and the split of amount plus VAT."""

    amount: int
    tax: int
    share: Share

    @property
    def total(self) -> int:
        return self.amount + self.tax


def price_invoice(
    amounts: Sequence[int], *, vat_basis_points: int, terms: CoverageTerms
) -> list[LineTotals]:
    """Add VAT to every line and split each line's total.

    VAT is computed per line, rounded half up. The split applies to the line
    total including VAT, so the payer carries its share of the tax.
    """
    taxes = [percent_of(amount, vat_basis_points) for amount in amounts]
    totals = [amount + tax for amount, tax in zip(amounts, taxes, strict=True)]
    shares = split_amounts(totals, terms)
    return [
        LineTotals(amount, tax, share)
        for amount, tax, share in zip(amounts, taxes, shares, strict=True)
    ]


@dataclass(frozen=True)
class PolicyTerms:
    """Policy facts the default payer adjudicates by."""

    policy_id: str
    payer_id: str
    member_id: str
    valid_from: dt.datetime
    valid_to: dt.datetime | None
    covered_systems: tuple[str, ...]
    benefit_limit_minor: int
    approved_so_far_minor: int

    def valid_at(self, moment: dt.datetime) -> bool:
        """Tell whether the policy is in force at ``moment``."""
        if moment < self.valid_from:
            return False
        return self.valid_to is None or moment < self.valid_to

    def covers_system(self, system: str) -> bool:
        return not self.covered_systems or system in self.covered_systems


@dataclass(frozen=True)
class ClaimLineInput:
    """One claim line as submitted: the payer share of one invoice line."""

    sequence: int
    system: str
    code: str
    submitted_minor: int


@dataclass(frozen=True)
class ClaimSubmission:
    """Everything a payer receives for one attempt of one claim."""

    claim_id: str
    attempt: int
    patient_id: str
    payer_id: str
    member_id: str
    currency: str
    service_date: dt.datetime
    lines: tuple[ClaimLineInput, ...]

    @property
    def total_minor(self) -> int:
        return sum(line.submitted_minor for line in self.lines)


OUTCOME_APPROVED = "approved"
OUTCOME_PARTIAL = "partial"
OUTCOME_DENIED = "denied"


@dataclass(frozen=True)
class AdjudicationResult:
    """Payer's decision: approved amount per line sequence and reasons."""

    outcome: str
    approved_by_line: dict[int, int]
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def approved_minor(self) -> int:
        return sum(self.approved_by_line.values())


def outcome_for(approved: int, submitted: int) -> str:
    """Name the outcome: all approved, some approved, or none."""
    if approved <= 0:
        return OUTCOME_DENIED
    if approved >= submitted:
        return OUTCOME_APPROVED
    return OUTCOME_PARTIAL


def adjudicate_by_plan(
    submission: ClaimSubmission, policy: PolicyTerms
) -> AdjudicationResult:
    """Adjudicate a claim by its policy's rules, as a payer would.

    A claim for a service outside the policy's validity, or with a wrong
    member id, is denied as a whole. Lines of a coding system the plan does
    not cover are denied. Approved amounts stop at the remaining benefit
    limit.
    """
    if submission.member_id != policy.member_id:
        return AdjudicationResult(
            OUTCOME_DENIED,
            {line.sequence: 0 for line in submission.lines},
            ("member id does not match the policy",),
        )
    if not policy.valid_at(submission.service_date):
        return AdjudicationResult(
            OUTCOME_DENIED,
            {line.sequence: 0 for line in submission.lines},
            ("service date is outside the policy's validity period",),
        )

    reasons: list[str] = []
    approved: dict[int, int] = {}
    limit_left = None
    if policy.benefit_limit_minor > 0:
        limit_left = max(0, policy.benefit_limit_minor - policy.approved_so_far_minor)
    for line in submission.lines:
        amount = line.submitted_minor
        if not policy.covers_system(line.system):
            reasons.append(
                f"line {line.sequence}: services of {line.system} are not covered"
            )
            amount = 0
        if limit_left is not None and amount > limit_left:
            reasons.append(f"line {line.sequence}: benefit limit reached")
            amount = limit_left
        if limit_left is not None:
            limit_left -= amount
        approved[line.sequence] = amount

    total = sum(approved.values())
    return AdjudicationResult(
        outcome_for(total, submission.total_minor), approved, tuple(reasons)
    )
