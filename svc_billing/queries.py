"""Read models: eligibility and balances computed from the billing tables."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session, select

from hin.billing.v1 import billing_service_pb2 as pb
from hin.common.v1 import types_pb2 as types
from svc_billing import convert, domain, store


def eligibility(
    session: Session, request: pb.CheckEligibilityRequest, moment: dt.datetime
) -> pb.CheckEligibilityResponse:
    """Find the covering policy and estimate the split of the list price."""
    patient_id = store.resolve_patient(session, request.patient_id)
    policy = store.active_policy(session, patient_id, moment, request.service.system)
    if policy is None:
        reasons = ["no policy in force on the service date covers "
                   f"{request.service.system}"]
        if not store.policies_of(session, patient_id):
            reasons = ["patient has no insurance policy"]
        return pb.CheckEligibilityResponse(eligible=False, reasons=reasons)
    remaining = max(
        0, policy.deductible_minor - store.deductible_used(session, policy.policy_id)
    )
    response = pb.CheckEligibilityResponse(
        eligible=True,
        policy=convert.policy(policy),
        deductible_remaining=convert.money(policy.currency, remaining),
    )
    price = store.price_on(
        session, request.service.system, request.service.code, moment.date()
    )
    if price is not None and price.currency == policy.currency:
        share = domain.split_amounts(
            [price.unit_minor],
            domain.CoverageTerms(
                policy.coverage_basis_points, policy.copay_minor, remaining
            ),
        )[0]
        response.estimated_patient_share.CopyFrom(
            convert.money(price.currency, share.patient)
        )
        response.estimated_payer_share.CopyFrom(
            convert.money(price.currency, share.payer)
        )
    return response


def patient_balances(session: Session, patient_id: str) -> list[pb.Balance]:
    """Sum a patient's invoices, payments, unbilled charges and claims."""
    patient_id = store.resolve_patient(session, patient_id)
    sums: dict[str, dict[str, int]] = {}

    def add(currency: str, name: str, amount: int) -> None:
        sums.setdefault(currency, {}).setdefault(name, 0)
        sums[currency][name] += amount

    for invoice in session.exec(
        select(store.InvoiceRow).where(
            store.InvoiceRow.patient_id == patient_id,
            store.InvoiceRow.status != "void",
        )
    ):
        add(invoice.currency, "billed", invoice.patient_responsibility_minor)
    for payment in session.exec(
        select(store.PaymentRow).where(
            store.PaymentRow.patient_id == patient_id, store.PaymentRow.payer_id == ""
        )
    ):
        add(payment.currency, "paid", payment.amount_minor)
    for charge in store.unbilled_charges(session, patient_id, ""):
        add(charge.currency, "unbilled", charge.amount_minor)
    for claim in session.exec(
        select(store.ClaimRow).where(store.ClaimRow.patient_id == patient_id)
    ):
        add(claim.currency, "claimed", claim.total_minor)
        add(claim.currency, "claim_approved", claim.approved_minor)
    return [balance(currency, sums[currency]) for currency in sorted(sums)]


def payer_balances(session: Session, payer_id: str) -> list[pb.Balance]:
    """Sum the amounts claimed from a payer, approved and paid, per currency.

    Historical claims count in ``claimed`` and ``claim_approved`` only: their
    payments happened outside this network.
    """
    sums: dict[str, dict[str, int]] = {}

    def add(currency: str, name: str, amount: int) -> None:
        sums.setdefault(currency, {}).setdefault(name, 0)
        sums[currency][name] += amount

    for claim in session.exec(
        select(store.ClaimRow).where(store.ClaimRow.payer_id == payer_id)
    ):
        add(claim.currency, "claimed", claim.total_minor)
        add(claim.currency, "claim_approved", claim.approved_minor)
        if claim.status != "historical":
            add(claim.currency, "billed", claim.approved_minor)
    for payment in session.exec(
        select(store.PaymentRow).where(store.PaymentRow.payer_id == payer_id)
    ):
        add(payment.currency, "paid", payment.amount_minor)
    return [balance(currency, sums[currency]) for currency in sorted(sums)]


def balance(currency: str, sums: dict[str, int]) -> pb.Balance:
    def money(name: str) -> types.Money:
        return convert.money(currency, sums.get(name, 0))

    billed, paid = sums.get("billed", 0), sums.get("paid", 0)
    return pb.Balance(
        currency=currency,
        billed=money("billed"),
        paid=money("paid"),
        outstanding=convert.money(currency, billed - paid),
        unbilled=money("unbilled"),
        claimed=money("claimed"),
        claim_approved=money("claim_approved"),
    )
