"""BillingService servicer: validate, authorize, then run one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from hin.billing.v1 import billing_service_pb2 as pb
from hin.billing.v1 import billing_service_pb2_grpc as pb_grpc
from hin.common.v1 import fhir_pb2
from hin.common.v1 import types_pb2 as types
from mesh.runtime.authz import Authorizer, Decision, Purpose, authorize
from mesh.runtime.errors import Unauthenticated
from mesh.runtime.principal import PrincipalKind, current_principal
from mesh.runtime.storage import Database
from mesh.runtime.validation import Violations
from svc_billing import (
    claims,
    convert,
    domain,
    fhir_import,
    ledger,
    prices,
    store,
)
from svc_billing.payer import Payer
from svc_billing.queries import eligibility, patient_balances, payer_balances
from svc_billing.validation import (
    check_coding,
    check_date,
    check_money,
    check_page,
    page_response,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
ResponseT = TypeVar("ResponseT", bound=Message)

READ = "billing.billing.read"
WRITE = "billing.billing.write"
#: Price list changes and FHIR imports are administration, not patient billing.
ADMIN_WRITE = "billing.admin.write"
MAX_QUANTITY = 10_000
PAYMENT_METHODS = ("cash", "card", "transfer", "payer-remittance")


class BillingServicer(pb_grpc.BillingServiceServicer):
    """Translate BillingService calls into ledger and claim operations."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: ledger.OutboxWriter,
        authorizer: Authorizer,
        payer: Payer,
        vat_basis_points: int,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._authorizer = authorizer
        self._payer = payer
        self._vat_basis_points = vat_basis_points

    async def _authorize(self, *, action: str, patient_id: str = "") -> Decision:
        """Check the caller for ``action``; billing acts for payment (HIPAA TPO)."""
        return await authorize(
            self._authorizer,
            action=action,
            patient_id=patient_id,
            purpose=Purpose.PURPOSE_PAYMENT,
        )

    # Prices ----------------------------------------------------------------

    async def ListPrices(
        self, request: pb.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPricesResponse:
        v = Violations()
        offset, size = check_page(v, request.page)
        as_of = None
        if request.HasField("as_of"):
            as_of = check_date(v, request.as_of, "as_of")
        v.check()
        await self._authorize(action=READ)

        def load(session: Session) -> list[pb.PriceEntry]:
            statement = select(store.PriceRow)
            if request.system:
                statement = statement.where(store.PriceRow.system == request.system)
            rows = session.exec(
                statement.order_by(
                    col(store.PriceRow.system),
                    col(store.PriceRow.code),
                    col(store.PriceRow.effective_from),
                )
            )
            return [
                convert.price(row)
                for row in rows
                if as_of is None or row.to_domain().applies_on(as_of)
            ]

        items = await self._db.run(load)
        return pb.ListPricesResponse(
            prices=items[offset : offset + size],
            page=page_response(items, offset, size),
        )

    async def SetPrice(
        self, request: pb.SetPriceRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPriceResponse:
        v = Violations()
        check_coding(v, request.service, "service")
        check_money(v, request.unit_price, "unit_price", required=True)
        day = check_date(v, request.effective_from, "effective_from")
        v.check()
        await self._authorize(action=ADMIN_WRITE)
        assert day is not None

        def write(session: Session) -> pb.PriceEntry:
            current = store.price_currency(session)
            if store.count_rows(session, store.PriceRow) and (
                request.unit_price.currency != current
            ):
                bad = Violations()
                bad.add("unit_price.currency", f"must be {current}, the price "
                        "list's currency")
                bad.check()
            row = prices.add_price(
                session,
                system=request.service.system,
                code=request.service.code,
                display=request.service.display,
                currency=request.unit_price.currency,
                unit_minor=request.unit_price.minor_units,
                effective_from=day,
            )
            return convert.price(row)

        return pb.SetPriceResponse(price=await self._db.run(write))

    # Charges ---------------------------------------------------------------

    async def PostCharge(
        self, request: pb.PostChargeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PostChargeResponse:
        v = Violations()
        v.require(request.idempotency_key, "idempotency_key")
        v.require(request.patient_id, "patient_id")
        check_coding(v, request.service, "service")
        if not 0 <= request.quantity <= MAX_QUANTITY:
            v.add("quantity", f"must be from 0 to {MAX_QUANTITY} (0 means 1)")
        if request.HasField("unit_price"):
            check_money(v, request.unit_price, "unit_price", required=True)
        v.check()
        await self._authorize(action=WRITE, patient_id=request.patient_id)

        item = ledger.ChargeInput(
            patient_id=request.patient_id,
            encounter_id=request.encounter_id,
            system=request.service.system,
            code=request.service.code,
            display=request.service.display,
            quantity=request.quantity or 1,
            service_date=(
                convert.to_datetime(request.service_date)
                if request.HasField("service_date")
                else ledger.now_utc()
            ),
            unit_price=request.unit_price if request.HasField("unit_price") else None,
            idempotency_key=request.idempotency_key,
            request_hash=ledger.fingerprint(request),
        )

        def write(session: Session) -> pb.Charge:
            return convert.charge(ledger.post_charge(session, self._outbox, item))

        charge = await run_idempotent(self._db, write)
        logger.info("charge posted", extra={"charge_id": charge.charge_id})
        return pb.PostChargeResponse(charge=charge)

    async def ReverseCharge(
        self, request: pb.ReverseChargeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReverseChargeResponse:
        v = Violations()
        v.require(request.charge_id, "charge_id")
        v.require(request.reason.strip(), "reason")
        v.check()
        require_caller()
        patient_id = await self._db.run(
            lambda s: ledger.load_charge(s, request.charge_id).patient_id
        )
        await self._authorize(action=WRITE, patient_id=patient_id)

        def write(session: Session) -> pb.Charge:
            row = ledger.reverse_charge(
                session,
                self._outbox,
                charge_id=request.charge_id,
                reason=request.reason.strip(),
                expected_version=request.expected_version,
            )
            return convert.charge(row)

        return pb.ReverseChargeResponse(charge=await self._db.run(write))

    async def GetCharge(
        self, request: pb.GetChargeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChargeResponse:
        v = Violations()
        v.require(request.charge_id, "charge_id")
        v.check()
        require_caller()
        charge = await self._db.run(
            lambda s: convert.charge(ledger.load_charge(s, request.charge_id))
        )
        decision = await self._authorize(action=READ, patient_id=charge.patient_id)
        return redacted(pb.GetChargeResponse(charge=charge), decision)

    async def ListCharges(
        self, request: pb.ListChargesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListChargesResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        offset, size = check_page(v, request.page)
        v.check()
        decision = await self._authorize(action=READ, patient_id=request.patient_id)

        def load(session: Session) -> list[pb.Charge]:
            patient_id = store.resolve_patient(session, request.patient_id)
            statement = select(store.ChargeRow).where(
                store.ChargeRow.patient_id == patient_id
            )
            if request.encounter_id:
                statement = statement.where(
                    store.ChargeRow.encounter_id == request.encounter_id
                )
            rows = session.exec(statement.order_by(col(store.ChargeRow.posted_at)))
            return [convert.charge(row) for row in rows]

        items = await self._db.run(load)
        response = pb.ListChargesResponse(
            charges=items[offset : offset + size],
            page=page_response(items, offset, size),
        )
        return redacted(response, decision)

    # Invoices --------------------------------------------------------------

    async def IssueInvoice(
        self, request: pb.IssueInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueInvoiceResponse:
        v = Violations()
        v.require(request.idempotency_key, "idempotency_key")
        v.require(request.patient_id, "patient_id")
        v.check()
        await self._authorize(action=WRITE, patient_id=request.patient_id)
        request_hash = ledger.fingerprint(request)

        def write(session: Session) -> pb.Invoice:
            row = ledger.issue_invoice(
                session,
                self._outbox,
                patient_id=request.patient_id,
                encounter_id=request.encounter_id,
                vat_basis_points=self._vat_basis_points,
                idempotency_key=request.idempotency_key,
                request_hash=request_hash,
            )
            return convert.invoice(row, store.invoice_lines(session, row.invoice_id))

        invoice = await run_idempotent(self._db, write)
        logger.info("invoice issued", extra={"invoice_id": invoice.invoice_id})
        return pb.IssueInvoiceResponse(invoice=invoice)

    async def VoidInvoice(
        self, request: pb.VoidInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.VoidInvoiceResponse:
        v = Violations()
        v.require(request.invoice_id, "invoice_id")
        v.require(request.reason.strip(), "reason")
        v.check()
        require_caller()
        patient_id = await self._db.run(
            lambda s: ledger.load_invoice(s, request.invoice_id).patient_id
        )
        await self._authorize(action=WRITE, patient_id=patient_id)

        def write(session: Session) -> pb.Invoice:
            row = ledger.void_invoice(
                session,
                invoice_id=request.invoice_id,
                reason=request.reason.strip(),
                expected_version=request.expected_version,
            )
            return convert.invoice(row, store.invoice_lines(session, row.invoice_id))

        return pb.VoidInvoiceResponse(invoice=await self._db.run(write))

    async def GetInvoice(
        self, request: pb.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInvoiceResponse:
        v = Violations()
        v.require(request.invoice_id, "invoice_id")
        v.check()
        require_caller()

        def load(session: Session) -> pb.Invoice:
            row = ledger.load_invoice(session, request.invoice_id)
            return convert.invoice(row, store.invoice_lines(session, row.invoice_id))

        invoice = await self._db.run(load)
        decision = await self._authorize(action=READ, patient_id=invoice.patient_id)
        return redacted(pb.GetInvoiceResponse(invoice=invoice), decision)

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInvoicesResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        offset, size = check_page(v, request.page)
        v.check()
        decision = await self._authorize(action=READ, patient_id=request.patient_id)

        def load(session: Session) -> list[pb.Invoice]:
            patient_id = store.resolve_patient(session, request.patient_id)
            rows = session.exec(
                select(store.InvoiceRow)
                .where(store.InvoiceRow.patient_id == patient_id)
                .order_by(col(store.InvoiceRow.issued_at))
            )
            return [
                convert.invoice(row, store.invoice_lines(session, row.invoice_id))
                for row in rows
            ]

        items = await self._db.run(load)
        response = pb.ListInvoicesResponse(
            invoices=items[offset : offset + size],
            page=page_response(items, offset, size),
        )
        return redacted(response, decision)

    # Coverage --------------------------------------------------------------

    async def CreatePolicy(
        self, request: pb.CreatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreatePolicyResponse:
        v = Violations()
        v.require(request.idempotency_key, "idempotency_key")
        v.require(request.patient_id, "patient_id")
        v.require(request.payer_id, "payer_id")
        v.require(request.member_id, "member_id")
        if not 0 <= request.coverage_basis_points <= 10_000:
            v.add("coverage_basis_points", "must be from 0 to 10000 (100 %)")
        currencies = set()
        for name in ("copay", "deductible", "benefit_limit"):
            if request.HasField(name):
                check_money(v, getattr(request, name), name, required=True)
                currencies.add(getattr(request, name).currency)
        if len(currencies) > 1:
            v.add("copay.currency", "copay, deductible and benefit_limit must "
                  "share one currency")
        if not request.period.HasField("start"):
            v.add("period.start", "is required")
        elif request.period.HasField("end") and (
            request.period.end.ToDatetime() <= request.period.start.ToDatetime()
        ):
            v.add("period.end", "must be after period.start")
        v.check()
        await self._authorize(action=WRITE, patient_id=request.patient_id)
        request_hash = ledger.fingerprint(request)

        def write(session: Session) -> pb.Policy:
            replay = session.exec(
                select(store.PolicyRow).where(
                    store.PolicyRow.idempotency_key == request.idempotency_key
                )
            ).first()
            if replay is not None:
                ledger.check_replay("CreatePolicy", request.idempotency_key,
                                    replay.request_hash, request_hash)
                return convert.policy(replay)
            row = store.PolicyRow(
                policy_id=ledger.new_id(),
                patient_id=store.resolve_patient(session, request.patient_id),
                payer_id=request.payer_id,
                member_id=request.member_id,
                plan_code=request.plan_code,
                coverage_basis_points=request.coverage_basis_points,
                currency=(
                    next(iter(currencies))
                    if currencies
                    else store.price_currency(session)
                ),
                copay_minor=request.copay.minor_units,
                deductible_minor=request.deductible.minor_units,
                benefit_limit_minor=request.benefit_limit.minor_units,
                valid_from=convert.to_datetime(request.period.start),
                valid_to=(
                    convert.to_datetime(request.period.end)
                    if request.period.HasField("end")
                    else None
                ),
                covered_systems=" ".join(request.covered_systems),
                idempotency_key=request.idempotency_key,
                request_hash=request_hash,
            )
            session.add(row)
            session.flush()
            return convert.policy(row)

        return pb.CreatePolicyResponse(policy=await run_idempotent(self._db, write))

    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPoliciesResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        offset, size = check_page(v, request.page)
        v.check()
        await self._authorize(action=READ, patient_id=request.patient_id)

        def load(session: Session) -> list[pb.Policy]:
            patient_id = store.resolve_patient(session, request.patient_id)
            return [convert.policy(r) for r in store.policies_of(session, patient_id)]

        items = await self._db.run(load)
        return pb.ListPoliciesResponse(
            policies=items[offset : offset + size],
            page=page_response(items, offset, size),
        )

    async def CheckEligibility(
        self, request: pb.CheckEligibilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckEligibilityResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        check_coding(v, request.service, "service")
        v.check()
        await self._authorize(action=READ, patient_id=request.patient_id)
        moment = (
            convert.to_datetime(request.service_date)
            if request.HasField("service_date")
            else ledger.now_utc()
        )
        return await self._db.run(eligibility, request, moment)

    # Claims ----------------------------------------------------------------

    async def CreateClaim(
        self, request: pb.CreateClaimRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateClaimResponse:
        v = Violations()
        v.require(request.idempotency_key, "idempotency_key")
        v.require(request.invoice_id, "invoice_id")
        v.check()
        require_caller()
        patient_id = await self._db.run(
            lambda s: ledger.load_invoice(s, request.invoice_id).patient_id
        )
        await self._authorize(action=WRITE, patient_id=patient_id)
        request_hash = ledger.fingerprint(request)

        def write(session: Session) -> pb.Claim:
            row = claims.create_claim(
                session,
                invoice_id=request.invoice_id,
                idempotency_key=request.idempotency_key,
                request_hash=request_hash,
            )
            return claim_message(session, row)

        return pb.CreateClaimResponse(claim=await run_idempotent(self._db, write))

    async def SubmitClaim(
        self, request: pb.SubmitClaimRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitClaimResponse:
        claim = await self._submit(
            request.claim_id, request.expected_version, from_status="draft"
        )
        return pb.SubmitClaimResponse(claim=claim)

    async def ResubmitClaim(
        self, request: pb.ResubmitClaimRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResubmitClaimResponse:
        claim = await self._submit(
            request.claim_id,
            request.expected_version,
            from_status="denied",
            note=request.note,
        )
        return pb.ResubmitClaimResponse(claim=claim)

    async def _submit(
        self, claim_id: str, expected_version: int, *, from_status: str, note: str = ""
    ) -> pb.Claim:
        v = Violations()
        v.require(claim_id, "claim_id")
        v.check()
        require_caller()
        patient_id = await self._db.run(
            lambda s: ledger.load_claim(s, claim_id).patient_id
        )
        await self._authorize(action=WRITE, patient_id=patient_id)

        # Mark the attempt in one transaction, call the payer with no
        # transaction open, then record its adjudication in a second one.
        submission, terms = await self._db.run(
            lambda s: claims.begin_submission(
                s,
                self._outbox,
                claim_id=claim_id,
                expected_version=expected_version,
                from_status=from_status,
                note=note,
            )
        )
        result = await self._payer.submit(submission, terms)
        if result is None:
            logger.info("claim awaits adjudication", extra={"claim_id": claim_id})
            return await self._db.run(
                lambda s: claim_message(s, ledger.load_claim(s, claim_id))
            )

        def record(session: Session) -> pb.Claim:
            row = claims.record_adjudication(
                session,
                self._outbox,
                claim_id=claim_id,
                attempt=submission.attempt,
                result=result,
            )
            return claim_message(session, row)

        claim = await self._db.run(record)
        logger.info(
            "claim adjudicated",
            extra={"claim_id": claim_id, "attempt": submission.attempt},
        )
        return claim

    async def RecordAdjudication(
        self,
        request: pb.RecordAdjudicationRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.RecordAdjudicationResponse:
        v = Violations()
        v.require(request.claim_id, "claim_id")
        if request.outcome not in convert.OUTCOME_NAMES:
            v.add("outcome", "must be APPROVED, PARTIAL or DENIED")
        check_money(v, request.approved, "approved", required=True)
        v.check()
        require_caller()
        patient_id = await self._db.run(
            lambda s: ledger.load_claim(s, request.claim_id).patient_id
        )
        await self._authorize(action=WRITE, patient_id=patient_id)

        def write(session: Session) -> pb.Claim:
            claim = ledger.load_claim(session, request.claim_id)
            checks = Violations()
            if request.approved.currency != claim.currency:
                checks.add("approved.currency", f"must be {claim.currency}, the "
                           "claim's currency")
            if request.approved.minor_units > claim.total_minor:
                checks.add("approved.minor_units", f"must not exceed the claim "
                           f"total {claim.total_minor}")
            checks.check()
            result = manual_result(session, claim, request)
            row = claims.record_adjudication(
                session,
                self._outbox,
                claim_id=claim.claim_id,
                attempt=claim.attempt,
                result=result,
                expected_version=request.expected_version,
            )
            return claim_message(session, row)

        return pb.RecordAdjudicationResponse(claim=await self._db.run(write))

    async def GetClaim(
        self, request: pb.GetClaimRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetClaimResponse:
        v = Violations()
        v.require(request.claim_id, "claim_id")
        v.check()
        require_caller()
        claim = await self._db.run(
            lambda s: claim_message(s, ledger.load_claim(s, request.claim_id))
        )
        decision = await self._authorize(action=READ, patient_id=claim.patient_id)
        return redacted(pb.GetClaimResponse(claim=claim), decision)

    async def ListClaims(
        self, request: pb.ListClaimsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListClaimsResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        offset, size = check_page(v, request.page)
        v.check()
        decision = await self._authorize(action=READ, patient_id=request.patient_id)

        def load(session: Session) -> tuple[list[pb.Claim], int]:
            patient_id = store.resolve_patient(session, request.patient_id)
            statement = select(store.ClaimRow).where(
                store.ClaimRow.patient_id == patient_id
            )
            total = session.exec(
                select(func.count()).select_from(statement.subquery())
            ).one()
            rows = session.exec(
                statement.order_by(
                    col(store.ClaimRow.created_at), col(store.ClaimRow.claim_id)
                )
                .offset(offset)
                .limit(size)
            )
            return [claim_message(session, row) for row in rows], int(total)

        items, total = await self._db.run(load)
        next_token = str(offset + size) if offset + size < total else ""
        response = pb.ListClaimsResponse(
            claims=items,
            page=types.PageResponse(next_page_token=next_token, total_size=total),
        )
        return redacted(response, decision)

    # Payments --------------------------------------------------------------

    async def RecordPayment(
        self, request: pb.RecordPaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordPaymentResponse:
        v = Violations()
        v.require(request.idempotency_key, "idempotency_key")
        v.require(request.patient_id, "patient_id")
        check_money(v, request.amount, "amount", required=True)
        if request.HasField("amount") and request.amount.minor_units == 0:
            v.add("amount.minor_units", "must be more than zero")
        if request.method not in PAYMENT_METHODS:
            v.add("method", f"must be one of {', '.join(PAYMENT_METHODS)}")
        if request.payer_id and not request.invoice_id:
            v.add("invoice_id", "is required for a payer payment")
        v.check()
        await self._authorize(action=WRITE, patient_id=request.patient_id)
        item = ledger.PaymentInput(
            patient_id=request.patient_id,
            payer_id=request.payer_id,
            invoice_id=request.invoice_id,
            amount=request.amount,
            method=request.method,
            idempotency_key=request.idempotency_key,
            request_hash=ledger.fingerprint(request),
        )

        def write(session: Session) -> pb.Payment:
            row, balance = ledger.record_payment(session, self._outbox, item)
            return convert.payment(row, balance)

        payment = await run_idempotent(self._db, write)
        logger.info("payment recorded", extra={"payment_id": payment.payment_id})
        return pb.RecordPaymentResponse(payment=payment)

    async def ListPayments(
        self, request: pb.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPaymentsResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        offset, size = check_page(v, request.page)
        v.check()
        await self._authorize(action=READ, patient_id=request.patient_id)

        def load(session: Session) -> list[pb.Payment]:
            patient_id = store.resolve_patient(session, request.patient_id)
            rows = session.exec(
                select(store.PaymentRow)
                .where(store.PaymentRow.patient_id == patient_id)
                .order_by(col(store.PaymentRow.receipt_number))
            )
            return [
                convert.payment(row, ledger.invoice_balance(session, row.invoice_id))
                for row in rows
            ]

        items = await self._db.run(load)
        return pb.ListPaymentsResponse(
            payments=items[offset : offset + size],
            page=page_response(items, offset, size),
        )

    async def GetPatientBalance(
        self, request: pb.GetPatientBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPatientBalanceResponse:
        v = Violations()
        v.require(request.patient_id, "patient_id")
        v.check()
        await self._authorize(action=READ, patient_id=request.patient_id)
        balances = await self._db.run(patient_balances, request.patient_id)
        return pb.GetPatientBalanceResponse(
            patient_id=request.patient_id, balances=balances
        )

    async def GetPayerBalance(
        self, request: pb.GetPayerBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPayerBalanceResponse:
        v = Violations()
        v.require(request.payer_id, "payer_id")
        v.check()
        await self._authorize(action=READ)
        balances = await self._db.run(payer_balances, request.payer_id)
        return pb.GetPayerBalanceResponse(payer_id=request.payer_id, balances=balances)

    # FHIR ------------------------------------------------------------------

    async def ImportFhir(
        self, request: pb.ImportFhirRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportFhirResponse:
        v = Violations()
        v.require(request.bundle, "bundle")
        entries: list[fhir_import.Entry] = []
        if request.bundle:
            try:
                entries = fhir_import.parse_bundle(request.bundle)
            except fhir_import.BundleError as exc:
                v.add("bundle", str(exc))
        v.check()
        await self._authorize(action=ADMIN_WRITE)

        def write(session: Session) -> list[fhir_pb2.FhirImportOutcome]:
            importer = fhir_import.Importer(
                session,
                references=dict(request.resolved_references),
                source=request.source,
            )
            return list(importer.run(entries))

        outcomes = await self._db.run(write)
        logger.info(
            "fhir bundle imported",
            extra={"entries": len(entries), "source": request.source},
        )
        return pb.ImportFhirResponse(outcomes=outcomes)


# Callers -------------------------------------------------------------------


def require_caller() -> None:
    """Raise Unauthenticated for a call without credentials.

    Calls that name an object by id load it to learn its patient before the
    authorization check. Checking for credentials first keeps an anonymous
    caller from learning which ids exist.
    """
    if current_principal().kind is PrincipalKind.ANONYMOUS:
        raise Unauthenticated(
            "this call needs a bearer token", reason="MISSING_CREDENTIALS"
        )


# Responses -----------------------------------------------------------------


def redacted(response: ResponseT, decision: Decision) -> ResponseT:
    """Remove service names from a response when the caller sees no clinical data.

    Billing staff read with ``redact_clinical`` set. The names of lab tests
    and procedures are clinical detail they do not need, while the codes stay
    because invoices and claims are built on them.
    """
    if decision.redact_clinical:
        clear_displays(response)
    return response


def clear_displays(message: Message) -> None:
    """Blank the display text of every Coding inside ``message``."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = [value] if isinstance(value, Message) else list(value)
        for item in items:
            if field.message_type.full_name == "hin.common.v1.Coding":
                item.ClearField("display")
            else:
                clear_displays(item)


# Transactions --------------------------------------------------------------


async def run_idempotent(db: Database, fn: Callable[[Session], T]) -> T:
    """Run ``fn`` once more when a concurrent retry won the unique constraint.

    Two calls with the same idempotency key can both miss the stored row and
    race to insert it. The loser's transaction fails on the unique key, so
    its second run finds the winner's row and returns it.
    """
    try:
        return await db.run(fn)
    except IntegrityError:
        logger.info("idempotency key raced; reading the stored result")
        return await db.run(fn)


def claim_message(session: Session, row: store.ClaimRow) -> pb.Claim:
    return convert.claim(
        row,
        store.claim_lines(session, row.claim_id),
        store.adjudications(session, row.claim_id),
    )


def manual_result(
    session: Session, claim: store.ClaimRow, request: pb.RecordAdjudicationRequest
) -> domain.AdjudicationResult:
    """Spread a payer's approved total over the claim lines in order."""
    left = request.approved.minor_units
    by_line: dict[int, int] = {}
    for line in store.claim_lines(session, claim.claim_id):
        amount = min(left, line.submitted_minor)
        by_line[line.sequence] = amount
        left -= amount
    return domain.AdjudicationResult(
        convert.OUTCOME_NAMES[request.outcome], by_line, tuple(request.reasons)
    )
