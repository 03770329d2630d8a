"""BillingService through a real in-process server and a generated stub."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hin.billing.v1 import billing_service_pb2 as pb
from hin.billing.v1 import events_pb2 as events
from hin.common.v1 import types_pb2 as types
from svc_billing import domain
from tests.billing.conftest import Billing, running_billing
from tests.billing.upstream import read_topic

VISIT = "urn:hin:code:visit-type"
LOINC = "http://loinc.org"
#: Prices in svc_billing/data/default_prices.json.
GENERAL_VISIT_PRICE = 30000
GLUCOSE_PRICE = 5000


def new_patient() -> str:
    return f"pat-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return uuid.uuid4().hex


def egp(minor: int) -> types.Money:
    return types.Money(currency="EGP", minor_units=minor)


def stamp(year: int, month: int, day: int) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(dt.datetime(year, month, day, 9, tzinfo=dt.UTC))
    return value


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                found[violation.field] = violation.description
    return found


async def post(
    billing: Billing,
    patient_id: str,
    code: str = "visit-general",
    system: str = VISIT,
    **fields: object,
) -> pb.Charge:
    fields.setdefault("service_date", stamp(2026, 6, 1))
    fields.setdefault("service", types.Coding(system=system, code=code))
    request = pb.PostChargeRequest(
        idempotency_key=key(),
        patient_id=patient_id,
        **fields,  # type: ignore[arg-type]
    )
    response = await billing.stub.PostCharge(request, metadata=billing.clerk)
    return response.charge


async def add_policy(billing: Billing, patient_id: str, **fields: object) -> pb.Policy:
    values: dict[str, object] = {
        "idempotency_key": key(),
        "patient_id": patient_id,
        "payer_id": "payer-misr",
        "member_id": "M-100",
        "plan_code": "gold",
        "coverage_basis_points": 8500,
        "period": types.Period(start=stamp(2026, 1, 1), end=stamp(2027, 1, 1)),
    }
    values.update(fields)
    response = await billing.stub.CreatePolicy(
        pb.CreatePolicyRequest(**values),  # type: ignore[arg-type]
        metadata=billing.clerk,
    )
    return response.policy


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
async def billing(
    request: pytest.FixtureRequest,
    billing_state: Path,
    kafka_bootstrap: str,
    postgres_database: Callable[[], str],
) -> AsyncIterator[Billing]:
    """Billing once on SQLite and once on PostgreSQL for every test here."""
    if request.param == "sqlite":
        url = f"sqlite:///{billing_state / 'billing.db'}"
    else:
        url = postgres_database()
    async with running_billing(billing_state, kafka_bootstrap, url) as service:
        yield service


# Charges ------------------------------------------------------------------


async def test_post_charge_prices_from_list(billing: Billing) -> None:
    patient_id = new_patient()
    charge = await post(billing, patient_id, quantity=2)
    assert charge.amount == egp(2 * GENERAL_VISIT_PRICE)
    assert charge.unit_price == egp(GENERAL_VISIT_PRICE)
    assert charge.status == pb.CHARGE_STATUS_UNBILLED


async def test_negative_amount_rejected(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await post(billing, new_patient(), unit_price=egp(-100))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unit_price.minor_units" in field_violations(caught.value)


async def test_huge_amount_rejected(billing: Billing) -> None:
    # 10,000 units at 2**62 piastres would overflow a 64-bit column.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await post(billing, new_patient(), quantity=10_000, unit_price=egp(2**62))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unit_price.minor_units" in field_violations(caught.value)


async def test_unknown_code_rejected(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await post(billing, new_patient(), code="no-such-visit")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service.code" in field_violations(caught.value)


async def test_foreign_currency_rejected(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await post(
            billing,
            new_patient(),
            unit_price=types.Money(currency="USD", minor_units=1000),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unit_price.currency" in field_violations(caught.value)


async def test_missing_fields_named(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.PostCharge(pb.PostChargeRequest(), metadata=billing.clerk)
    violations = field_violations(caught.value)
    assert set(violations) == {
        "idempotency_key",
        "patient_id",
        "service.system",
        "service.code",
    }


async def test_charge_needs_billing_role(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.PostCharge(
            pb.PostChargeRequest(
                idempotency_key=key(),
                patient_id=new_patient(),
                service=types.Coding(system=VISIT, code="visit-general"),
            ),
            metadata=billing.doctor,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_charge_needs_token(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ListCharges(pb.ListChargesRequest(patient_id="p"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_retried_charge_returns_first(billing: Billing) -> None:
    patient_id = new_patient()
    request = pb.PostChargeRequest(
        idempotency_key=key(),
        patient_id=patient_id,
        service=types.Coding(system=VISIT, code="visit-specialist"),
    )
    first = await billing.stub.PostCharge(request, metadata=billing.clerk)
    second = await billing.stub.PostCharge(request, metadata=billing.clerk)
    assert second.charge.charge_id == first.charge.charge_id
    listed = await billing.stub.ListCharges(
        pb.ListChargesRequest(patient_id=patient_id), metadata=billing.clerk
    )
    assert len(listed.charges) == 1


async def test_concurrent_retries_charge_once(billing: Billing) -> None:
    patient_id = new_patient()
    request = pb.PostChargeRequest(
        idempotency_key=key(),
        patient_id=patient_id,
        service=types.Coding(system=VISIT, code="visit-followup"),
    )
    responses = await asyncio.gather(
        *(billing.stub.PostCharge(request, metadata=billing.clerk) for _ in range(8))
    )
    assert len({response.charge.charge_id for response in responses}) == 1
    listed = await billing.stub.ListCharges(
        pb.ListChargesRequest(patient_id=patient_id), metadata=billing.clerk
    )
    assert len(listed.charges) == 1


async def test_reused_key_other_request_rejected(billing: Billing) -> None:
    shared = key()
    patient_id = new_patient()
    await billing.stub.PostCharge(
        pb.PostChargeRequest(
            idempotency_key=shared,
            patient_id=patient_id,
            service=types.Coding(system=VISIT, code="visit-general"),
        ),
        metadata=billing.clerk,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.PostCharge(
            pb.PostChargeRequest(
                idempotency_key=shared,
                patient_id=patient_id,
                service=types.Coding(system=VISIT, code="visit-emergency"),
            ),
            metadata=billing.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_reverse_charge_once(billing: Billing) -> None:
    charge = await post(billing, new_patient())
    reversed_charge = (
        await billing.stub.ReverseCharge(
            pb.ReverseChargeRequest(
                charge_id=charge.charge_id,
                reason="posted to the wrong patient",
                expected_version=charge.version,
            ),
            metadata=billing.clerk,
        )
    ).charge
    assert reversed_charge.status == pb.CHARGE_STATUS_REVERSED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ReverseCharge(
            pb.ReverseChargeRequest(charge_id=charge.charge_id, reason="again"),
            metadata=billing.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_stale_version_aborted(billing: Billing) -> None:
    charge = await post(billing, new_patient())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ReverseCharge(
            pb.ReverseChargeRequest(
                charge_id=charge.charge_id,
                reason="wrong",
                expected_version=charge.version + 5,
            ),
            metadata=billing.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_unknown_charge_not_found(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.GetCharge(
            pb.GetChargeRequest(charge_id="nope"), metadata=billing.clerk
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# Invoices and coverage -----------------------------------------------------


async def test_invoice_without_policy_all_patient(billing: Billing) -> None:
    patient_id = new_patient()
    await post(billing, patient_id)
    await post(billing, patient_id, code="2339-0", system=LOINC)
    invoice = (
        await billing.stub.IssueInvoice(
            pb.IssueInvoiceRequest(idempotency_key=key(), patient_id=patient_id),
            metadata=billing.clerk,
        )
    ).invoice
    expected_total = GENERAL_VISIT_PRICE + GLUCOSE_PRICE
    assert invoice.total == egp(expected_total)
    assert invoice.patient_responsibility == egp(expected_total)
    assert invoice.payer_responsibility == egp(0)
    assert len(invoice.lines) == 2


async def test_invoice_split_with_copayment(billing: Billing) -> None:
    patient_id = new_patient()
    await add_policy(billing, patient_id)
    await post(billing, patient_id, unit_price=egp(33333))
    invoice = (
        await billing.stub.IssueInvoice(
            pb.IssueInvoiceRequest(idempotency_key=key(), patient_id=patient_id),
            metadata=billing.clerk,
        )
    ).invoice
    # 15 % of 33333 = 4999.95, rounded half up to 5000; the payer gets 28333.
    assert invoice.patient_responsibility == egp(5000)
    assert invoice.payer_responsibility == egp(28333)
    assert invoice.payer_id == "payer-misr"


async def test_invoice_needs_charges(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.IssueInvoice(
            pb.IssueInvoiceRequest(idempotency_key=key(), patient_id=new_patient()),
            metadata=billing.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_void_invoice_frees_charges(billing: Billing) -> None:
    patient_id = new_patient()
    charge = await post(billing, patient_id)
    invoice = (
        await billing.stub.IssueInvoice(
            pb.IssueInvoiceRequest(idempotency_key=key(), patient_id=patient_id),
            metadata=billing.clerk,
        )
    ).invoice
    voided = (
        await billing.stub.VoidInvoice(
            pb.VoidInvoiceRequest(
                invoice_id=invoice.invoice_id,
                reason="issued too early",
                expected_version=invoice.version,
            ),
            metadata=billing.clerk,
        )
    ).invoice
    assert voided.status == pb.INVOICE_STATUS_VOID
    again = await billing.stub.GetCharge(
        pb.GetChargeRequest(charge_id=charge.charge_id), metadata=billing.clerk
    )
    assert again.charge.status == pb.CHARGE_STATUS_UNBILLED


async def test_eligibility_with_policy(billing: Billing) -> None:
    patient_id = new_patient()
    await add_policy(billing, patient_id, deductible=egp(10000))
    response = await billing.stub.CheckEligibility(
        pb.CheckEligibilityRequest(
            patient_id=patient_id,
            service_date=stamp(2026, 6, 1),
            service=types.Coding(system=VISIT, code="visit-general"),
        ),
        metadata=billing.clerk,
    )
    assert response.eligible
    assert response.deductible_remaining == egp(10000)
    # 10000 deductible, then 15 % of 20000 = 3000.
    assert response.estimated_patient_share == egp(13000)
    assert response.estimated_payer_share == egp(17000)


async def test_eligibility_outside_period(billing: Billing) -> None:
    patient_id = new_patient()
    await add_policy(billing, patient_id)
    response = await billing.stub.CheckEligibility(
        pb.CheckEligibilityRequest(
            patient_id=patient_id,
            service_date=stamp(2028, 6, 1),
            service=types.Coding(system=VISIT, code="visit-general"),
        ),
        metadata=billing.clerk,
    )
    assert not response.eligible
    assert response.reasons


# Claims --------------------------------------------------------------------


async def invoice_with_policy(
    billing: Billing, patient_id: str, **policy_fields: object
) -> pb.Invoice:
    await add_policy(billing, patient_id, **policy_fields)
    await post(billing, patient_id)
    response = await billing.stub.IssueInvoice(
        pb.IssueInvoiceRequest(idempotency_key=key(), patient_id=patient_id),
        metadata=billing.clerk,
    )
    return response.invoice


async def create_claim(billing: Billing, invoice_id: str) -> pb.Claim:
    response = await billing.stub.CreateClaim(
        pb.CreateClaimRequest(idempotency_key=key(), invoice_id=invoice_id),
        metadata=billing.clerk,
    )
    return response.claim


async def test_claim_approved_by_plan(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    claim = await create_claim(billing, invoice.invoice_id)
    # 85 % of 30000 is the payer's share on the claim.
    assert claim.total == egp(25500)
    submitted = (
        await billing.stub.SubmitClaim(
            pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
        )
    ).claim
    assert submitted.status == pb.CLAIM_STATUS_APPROVED
    assert submitted.adjudications[0].approved == egp(25500)
    assert submitted.adjudications[0].patient_responsibility == egp(4500)


async def test_claim_partial_at_limit(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(
        billing, patient_id, benefit_limit=egp(20000)
    )
    claim = await create_claim(billing, invoice.invoice_id)
    adjudicated = (
        await billing.stub.SubmitClaim(
            pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
        )
    ).claim
    assert adjudicated.status == pb.CLAIM_STATUS_PARTIAL
    assert adjudicated.adjudications[0].approved == egp(20000)
    refreshed = await billing.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=invoice.invoice_id), metadata=billing.clerk
    )
    # The unapproved 5500 moves to the patient: 4500 + 5500.
    assert refreshed.invoice.patient_responsibility == egp(10000)


async def test_denied_claim_resubmitted(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    claim = await create_claim(billing, invoice.invoice_id)
    billing.payer.queued.append(
        domain.AdjudicationResult(
            domain.OUTCOME_DENIED, {1: 0}, ("missing referral",)
        )
    )
    denied = (
        await billing.stub.SubmitClaim(
            pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
        )
    ).claim
    assert denied.status == pb.CLAIM_STATUS_DENIED
    assert list(denied.adjudications[0].reasons) == ["missing referral"]

    approved = (
        await billing.stub.ResubmitClaim(
            pb.ResubmitClaimRequest(
                claim_id=claim.claim_id,
                expected_version=denied.version,
                note="referral attached",
            ),
            metadata=billing.clerk,
        )
    ).claim
    assert approved.status == pb.CLAIM_STATUS_APPROVED
    assert approved.attempt == 2
    assert [a.outcome for a in approved.adjudications] == [
        events.ADJUDICATION_OUTCOME_DENIED,
        events.ADJUDICATION_OUTCOME_APPROVED,
    ]


async def test_resubmit_needs_denial(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    claim = await create_claim(billing, invoice.invoice_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ResubmitClaim(
            pb.ResubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_pending_claim_adjudicated_later(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    claim = await create_claim(billing, invoice.invoice_id)
    billing.payer.queued.append(None)
    pending = (
        await billing.stub.SubmitClaim(
            pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
        )
    ).claim
    assert pending.status == pb.CLAIM_STATUS_SUBMITTED
    recorded = (
        await billing.stub.RecordAdjudication(
            pb.RecordAdjudicationRequest(
                claim_id=claim.claim_id,
                expected_version=pending.version,
                outcome=events.ADJUDICATION_OUTCOME_PARTIAL,
                approved=egp(20000),
                reasons=["price above the payer's schedule"],
            ),
            metadata=billing.clerk,
        )
    ).claim
    assert recorded.status == pb.CLAIM_STATUS_PARTIAL
    assert recorded.lines[0].approved == egp(20000)


# Payments and balances -----------------------------------------------------


async def test_payment_receipt_and_balance(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    request = pb.RecordPaymentRequest(
        idempotency_key=key(),
        patient_id=patient_id,
        invoice_id=invoice.invoice_id,
        amount=egp(3000),
        method="cash",
    )
    response = await billing.stub.RecordPayment(request, metadata=billing.clerk)
    payment = response.payment
    assert payment.receipt.receipt_number.startswith("RCPT-")
    # Patient owes 4500 on the invoice; 3000 paid leaves 1500.
    assert payment.receipt.invoice_balance == egp(1500)

    balance = await billing.stub.GetPatientBalance(
        pb.GetPatientBalanceRequest(patient_id=patient_id), metadata=billing.clerk
    )
    [egp_balance] = balance.balances
    assert egp_balance.billed == egp(4500)
    assert egp_balance.paid == egp(3000)
    assert egp_balance.outstanding == egp(1500)


async def test_concurrent_payment_retries_once(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    request = pb.RecordPaymentRequest(
        idempotency_key=key(),
        patient_id=patient_id,
        invoice_id=invoice.invoice_id,
        amount=egp(1000),
        method="card",
    )
    responses = await asyncio.gather(
        *(billing.stub.RecordPayment(request, metadata=billing.clerk) for _ in range(8))
    )
    assert len({r.payment.payment_id for r in responses}) == 1
    listed = await billing.stub.ListPayments(
        pb.ListPaymentsRequest(patient_id=patient_id), metadata=billing.clerk
    )
    assert len(listed.payments) == 1


async def test_overpayment_rejected(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.RecordPayment(
            pb.RecordPaymentRequest(
                idempotency_key=key(),
                patient_id=patient_id,
                invoice_id=invoice.invoice_id,
                amount=egp(4501),
                method="cash",
            ),
            metadata=billing.clerk,
        )
    assert "amount.minor_units" in field_violations(caught.value)


async def test_payer_balance_after_remittance(billing: Billing) -> None:
    patient_id = new_patient()
    payer_id = f"payer-{key()[:8]}"
    invoice = await invoice_with_policy(billing, patient_id, payer_id=payer_id)
    claim = await create_claim(billing, invoice.invoice_id)
    await billing.stub.SubmitClaim(
        pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
    )
    await billing.stub.RecordPayment(
        pb.RecordPaymentRequest(
            idempotency_key=key(),
            patient_id=patient_id,
            payer_id=payer_id,
            invoice_id=invoice.invoice_id,
            amount=egp(20000),
            method="payer-remittance",
        ),
        metadata=billing.clerk,
    )
    balance = await billing.stub.GetPayerBalance(
        pb.GetPayerBalanceRequest(payer_id=payer_id), metadata=billing.clerk
    )
    [egp_balance] = balance.balances
    assert egp_balance.billed == egp(25500)
    assert egp_balance.paid == egp(20000)
    assert egp_balance.outstanding == egp(5500)


# Prices --------------------------------------------------------------------


async def test_new_price_applies_from_date(billing: Billing) -> None:
    code = f"proc-{key()[:8]}"
    for day, price in ((dt.date(2025, 1, 1), 1000), (dt.date(2026, 7, 1), 1500)):
        await billing.stub.SetPrice(
            pb.SetPriceRequest(
                service=types.Coding(system="urn:test:procedure", code=code),
                unit_price=egp(price),
                effective_from=types.Date(year=day.year, month=day.month, day=day.day),
            ),
            metadata=billing.admin,
        )
    before = await post(
        billing, new_patient(), code=code, system="urn:test:procedure"
    )
    after = await post(
        billing,
        new_patient(),
        code=code,
        system="urn:test:procedure",
        service_date=stamp(2026, 7, 1),
    )
    assert before.amount == egp(1000)
    assert after.amount == egp(1500)


async def test_price_list_loaded_once(billing: Billing) -> None:
    listed = await billing.stub.ListPrices(
        pb.ListPricesRequest(system=VISIT), metadata=billing.clerk
    )
    assert sorted(p.service.code for p in listed.prices) == [
        "visit-emergency",
        "visit-followup",
        "visit-general",
        "visit-specialist",
    ]


async def test_invalid_page_token_named(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ListCharges(
            pb.ListChargesRequest(
                patient_id=new_patient(), page=types.PageRequest(page_token="x")
            ),
            metadata=billing.clerk,
        )
    assert "page.page_token" in field_violations(caught.value)


async def test_money_events_published(billing: Billing, kafka_bootstrap: str) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    claim = await create_claim(billing, invoice.invoice_id)
    await billing.stub.SubmitClaim(
        pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
    )
    await billing.stub.RecordPayment(
        pb.RecordPaymentRequest(
            idempotency_key=key(),
            patient_id=patient_id,
            invoice_id=invoice.invoice_id,
            amount=egp(4500),
            method="cash",
        ),
        metadata=billing.clerk,
    )
    event_types = {
        "hin.billing.v1.ChargePosted": events.ChargePosted,
        "hin.billing.v1.InvoiceIssued": events.InvoiceIssued,
        "hin.billing.v1.ClaimSubmitted": events.ClaimSubmitted,
        "hin.billing.v1.ClaimAdjudicated": events.ClaimAdjudicated,
        "hin.billing.v1.PaymentReceived": events.PaymentReceived,
    }

    def of_patient(records: list[tuple[dict[str, str], bytes]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for headers, value in records:
            event_type = headers.get("ce_type", "")
            if event_type in event_types:
                event = event_types[event_type].FromString(value)
                if event.patient_id == patient_id:
                    found[event_type] = event
        return found

    records = await asyncio.to_thread(
        read_topic,
        kafka_bootstrap,
        "hin.billing.events.v1",
        complete=lambda records: len(of_patient(records)) == len(event_types),
        idle_seconds=0.2,
    )
    found = of_patient(records)
    assert found["hin.billing.v1.InvoiceIssued"].total == egp(GENERAL_VISIT_PRICE)
    assert found["hin.billing.v1.InvoiceIssued"].payer_responsibility == egp(25500)
    assert found["hin.billing.v1.ClaimSubmitted"].attempt == 1
    adjudicated = found["hin.billing.v1.ClaimAdjudicated"]
    assert adjudicated.outcome == events.ADJUDICATION_OUTCOME_APPROVED
    assert adjudicated.approved == egp(25500)
    assert found["hin.billing.v1.PaymentReceived"].amount == egp(4500)


async def test_payer_payment_checked(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id)
    for payer_id, amount, field in (
        ("payer-other", 1000, "payer_id"),
        ("payer-misr", 25501, "amount.minor_units"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await billing.stub.RecordPayment(
                pb.RecordPaymentRequest(
                    idempotency_key=key(),
                    patient_id=patient_id,
                    payer_id=payer_id,
                    invoice_id=invoice.invoice_id,
                    amount=egp(amount),
                    method="payer-remittance",
                ),
                metadata=billing.clerk,
            )
        assert field in field_violations(caught.value), payer_id


async def test_partial_adjudication_reopens_invoice(billing: Billing) -> None:
    patient_id = new_patient()
    invoice = await invoice_with_policy(billing, patient_id, benefit_limit=egp(20000))
    await billing.stub.RecordPayment(
        pb.RecordPaymentRequest(
            idempotency_key=key(),
            patient_id=patient_id,
            invoice_id=invoice.invoice_id,
            amount=egp(4500),
            method="cash",
        ),
        metadata=billing.clerk,
    )
    paid = await billing.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=invoice.invoice_id), metadata=billing.clerk
    )
    assert paid.invoice.status == pb.INVOICE_STATUS_PAID

    claim = await create_claim(billing, invoice.invoice_id)
    await billing.stub.SubmitClaim(
        pb.SubmitClaimRequest(claim_id=claim.claim_id), metadata=billing.clerk
    )
    reopened = await billing.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=invoice.invoice_id), metadata=billing.clerk
    )
    # The payer approved 20000 of 25500; the patient now owes 5500 more.
    assert reopened.invoice.status == pb.INVOICE_STATUS_ISSUED
    assert reopened.invoice.patient_responsibility == egp(10000)


async def test_set_price_retry_and_conflict(billing: Billing) -> None:
    request = pb.SetPriceRequest(
        service=types.Coding(system="urn:test:procedure", code=f"p-{key()[:8]}"),
        unit_price=egp(2000),
        effective_from=types.Date(year=2026, month=1, day=1),
    )
    first = await billing.stub.SetPrice(request, metadata=billing.admin)
    retried = await billing.stub.SetPrice(request, metadata=billing.admin)
    assert retried.price.price_id == first.price.price_id

    request.unit_price.minor_units = 2500
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.SetPrice(request, metadata=billing.admin)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_set_price_needs_admin(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.SetPrice(
            pb.SetPriceRequest(
                service=types.Coding(system="urn:test:procedure", code="p-1"),
                unit_price=egp(2000),
                effective_from=types.Date(year=2026, month=1, day=1),
            ),
            metadata=billing.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_old_service_date_priced(billing: Billing) -> None:
    # Results sent over HL7 can carry service dates decades back; the shipped
    # price list applies from 1900-01-01.
    charge = await post(billing, new_patient(), service_date=stamp(1995, 3, 1))
    assert charge.amount == egp(GENERAL_VISIT_PRICE)


async def test_clinical_names_redacted_for_clerks(billing: Billing) -> None:
    charge = await post(
        billing,
        new_patient(),
        service=types.Coding(system=LOINC, code="2339-0", display="Glucose"),
    )
    request = pb.GetChargeRequest(charge_id=charge.charge_id)
    clerk_view = await billing.stub.GetCharge(request, metadata=billing.clerk)
    clinical_view = await billing.stub.GetCharge(request, metadata=billing.clinical)
    assert clerk_view.charge.service.display == ""
    assert clerk_view.charge.service.code == "2339-0"
    assert clinical_view.charge.service.display == "Glucose"


async def test_anonymous_lookup_unauthenticated(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.GetCharge(pb.GetChargeRequest(charge_id="no-such-charge"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
