"""Billing rules: rounding, the patient and payer split, prices, adjudication."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from svc_billing import domain

UTC = dt.UTC


@pytest.mark.parametrize(
    ("amount", "basis_points", "expected"),
    [
        # 15 % of 333.33 EGP is 49.9995 EGP: 4999.95 piastres rounds up.
        (33333, 1500, 5000),
        # 15 % of 0.01 EGP is 0.15 piastre: rounds down to 0.
        (1, 1500, 0),
        # 50 % of 1 piastre is exactly half: half up gives 1.
        (1, 5000, 1),
        # 15 % of 0.03 EGP is 0.45 piastre: below half, 0.
        (3, 1500, 0),
        # 15 % of 0.04 EGP is 0.6 piastre: above half, 1.
        (4, 1500, 1),
        (0, 1500, 0),
        (33333, 0, 0),
        (33333, 10000, 33333),
        # 33.33 % of 100.00 EGP is 3333 piastres exactly.
        (10000, 3333, 3333),
        # Large amounts stay exact: 15 % of 10^15 piastres.
        (10**15, 1500, 15 * 10**13),
    ],
)
def test_percent_of_rounds_half_up(
    amount: int, basis_points: int, expected: int
) -> None:
    assert domain.percent_of(amount, basis_points) == expected


def test_percent_of_rejects_negative_amount() -> None:
    with pytest.raises(ValueError, match="zero or more"):
        domain.percent_of(-1, 1500)


@pytest.mark.parametrize(
    ("amount", "patient", "payer"),
    [
        # 85 % coverage leaves a 15 % co-payment: 4999.95 -> 5000 piastres.
        (33333, 5000, 28333),
        (1, 0, 1),
        (3, 0, 3),
        (4, 1, 3),
        (7, 1, 6),  # 1.05 -> 1
        (10, 2, 8),  # 1.5 -> 2 (exact half goes up)
        (30, 5, 25),  # 4.5 -> 5
        (0, 0, 0),
    ],
)
def test_copayment_split_adds_up(amount: int, patient: int, payer: int) -> None:
    terms = domain.CoverageTerms(coverage_basis_points=8500)
    [share] = domain.split_amounts([amount], terms)
    assert share.patient == patient
    assert share.payer == payer
    assert share.patient + share.payer == amount


def test_split_adds_up_for_every_amount() -> None:
    terms = domain.CoverageTerms(
        coverage_basis_points=8500, copay_minor=700, deductible_remaining_minor=0
    )
    for amount in range(0, 5000, 7):
        [share] = domain.split_amounts([amount], terms)
        assert share.patient + share.payer == amount, amount
        assert 0 <= share.payer <= amount, amount


def test_deductible_consumed_across_lines() -> None:
    terms = domain.CoverageTerms(
        coverage_basis_points=8000, copay_minor=0, deductible_remaining_minor=15000
    )
    shares = domain.split_amounts([10000, 10000], terms)
    # Line 1 goes wholly to the deductible.
    assert shares[0] == domain.Share(patient=10000, payer=0, deductible_applied=10000)
    # Line 2: 5000 deductible, then 20 % of the remaining 5000 = 1000.
    assert shares[1] == domain.Share(patient=6000, payer=4000, deductible_applied=5000)


def test_copay_taken_before_coinsurance() -> None:
    terms = domain.CoverageTerms(coverage_basis_points=9000, copay_minor=5000)
    [share] = domain.split_amounts([30000], terms)
    # 5000 copay, then 10 % of 25000 = 2500.
    assert share.patient == 7500
    assert share.payer == 22500


def test_vat_added_per_line_then_split() -> None:
    lines = domain.price_invoice(
        [33333], vat_basis_points=1400, terms=domain.CoverageTerms(8500)
    )
    # 14 % of 33333 = 4666.62 -> 4667; total 38000; 15 % of it = 5700.
    assert lines[0].tax == 4667
    assert lines[0].total == 38000
    assert lines[0].share.patient == 5700
    assert lines[0].share.payer == 32300


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("14", 1400), ("2.25", 225), ("100", 10000)]
)
def test_rate_parsed_to_basis_points(text: str, expected: int) -> None:
    assert domain.parse_rate_basis_points(text) == expected


@pytest.mark.parametrize("text", ["abc", "14.125", "-1", "101"])
def test_rate_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        domain.parse_rate_basis_points(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("265.52", 26552),
        ("894.264", 89426),
        ("685.9280000000001", 68593),
        ("0.005", 1),
        ("0.004", 0),
        ("129", 12900),
        ("112.41600000000001", 11242),
    ],
)
def test_decimal_converted_half_up(value: str, expected: int) -> None:
    assert domain.decimal_to_minor_units(Decimal(value)) == expected


def test_price_in_effect_by_date() -> None:
    old = domain.PriceEntry(
        "s", "c", "EGP", 100, dt.date(2020, 1, 1), dt.date(2024, 1, 1)
    )
    new = domain.PriceEntry("s", "c", "EGP", 150, dt.date(2024, 1, 1))
    assert domain.find_price([old, new], dt.date(2023, 12, 31)) == old
    assert domain.find_price([old, new], dt.date(2024, 1, 1)) == new
    assert domain.find_price([old, new], dt.date(2019, 12, 31)) is None


def make_policy(**changes: object) -> domain.PolicyTerms:
    values: dict[str, object] = {
        "policy_id": "pol-1",
        "payer_id": "payer-1",
        "member_id": "M-1",
        "valid_from": dt.datetime(2026, 1, 1, tzinfo=UTC),
        "valid_to": dt.datetime(2027, 1, 1, tzinfo=UTC),
        "covered_systems": (),
        "benefit_limit_minor": 0,
        "approved_so_far_minor": 0,
    }
    values.update(changes)
    return domain.PolicyTerms(**values)  # type: ignore[arg-type]


def make_submission(*lines: tuple[str, int]) -> domain.ClaimSubmission:
    return domain.ClaimSubmission(
        claim_id="claim-1",
        attempt=1,
        patient_id="pat-1",
        payer_id="payer-1",
        member_id="M-1",
        currency="EGP",
        service_date=dt.datetime(2026, 6, 1, tzinfo=UTC),
        lines=tuple(
            domain.ClaimLineInput(index, system, "code", amount)
            for index, (system, amount) in enumerate(lines, start=1)
        ),
    )


def test_plan_approves_covered_claim() -> None:
    result = domain.adjudicate_by_plan(make_submission(("s", 1000)), make_policy())
    assert result.outcome == domain.OUTCOME_APPROVED
    assert result.approved_minor == 1000


def test_plan_denies_outside_validity() -> None:
    policy = make_policy(valid_to=dt.datetime(2026, 3, 1, tzinfo=UTC))
    result = domain.adjudicate_by_plan(make_submission(("s", 1000)), policy)
    assert result.outcome == domain.OUTCOME_DENIED
    assert result.approved_minor == 0
    assert "validity" in result.reasons[0]


def test_plan_partial_at_benefit_limit() -> None:
    policy = make_policy(benefit_limit_minor=5000, approved_so_far_minor=4000)
    result = domain.adjudicate_by_plan(make_submission(("s", 3000)), policy)
    assert result.outcome == domain.OUTCOME_PARTIAL
    assert result.approved_minor == 1000


def test_plan_denies_uncovered_system_line() -> None:
    policy = make_policy(covered_systems=("http://loinc.org",))
    result = domain.adjudicate_by_plan(
        make_submission(("http://loinc.org", 2000), ("urn:other", 500)), policy
    )
    assert result.outcome == domain.OUTCOME_PARTIAL
    assert result.approved_by_line == {1: 2000, 2: 0}
