"""Claim operations: build from an invoice, submit, record adjudication.

Each function runs inside the caller's transaction. The payer is called
between two transactions (see the servicer), never while one is open.
"""

from __future__ import annotations

from sqlmodel import Session, select

from hin.billing.v1 import events_pb2 as events
from svc_billing import convert, domain, store
from svc_billing.errors import InvalidState, PolicyNotFound, check_version
from svc_billing.ledger import (
    OutboxWriter,
    check_replay,
    event_context,
    load_claim,
    load_invoice,
    new_id,
    now_utc,
)


def create_claim(
    session: Session, *, invoice_id: str, idempotency_key: str, request_hash: str
) -> store.ClaimRow:
    """Build a draft claim for the payer's share of an issued invoice."""
    if idempotency_key:
        replay = session.exec(
            select(store.ClaimRow).where(
                store.ClaimRow.idempotency_key == idempotency_key
            )
        ).first()
        if replay is not None:
            check_replay("CreateClaim", idempotency_key, replay.request_hash,
                         request_hash)
            return replay

    invoice = load_invoice(session, invoice_id)
    if invoice.status == "void" or not invoice.policy_id:
        raise InvalidState(
            f"invoice {invoice_id} is {invoice.status}"
            + ("" if invoice.policy_id else " and has no insurance policy")
            + "; a claim needs an issued invoice with a payer share",
            reason="INVOICE_NOT_CLAIMABLE",
        )
    live = session.exec(
        select(store.ClaimRow).where(
            store.ClaimRow.invoice_id == invoice_id,
            store.ClaimRow.status != "denied",
        )
    ).first()
    if live is not None:
        raise InvalidState(
            f"invoice {invoice_id} already has claim {live.claim_id} in status "
            f"{live.status}; resubmit that claim instead",
            reason="CLAIM_EXISTS",
        )
    lines = [
        line for line in store.invoice_lines(session, invoice_id)
        if line.payer_share_minor > 0
    ]
    if not lines:
        raise InvalidState(
            f"invoice {invoice_id} has no payer share to claim",
            reason="INVOICE_NOT_CLAIMABLE",
        )

    charges = [session.get(store.ChargeRow, line.charge_id) for line in lines]
    service_date = min(
        store.as_utc(charge.service_date) for charge in charges if charge is not None
    )
    claim = store.ClaimRow(
        claim_id=new_id(),
        patient_id=invoice.patient_id,
        invoice_id=invoice_id,
        policy_id=invoice.policy_id,
        payer_id=invoice.payer_id,
        currency=invoice.currency,
        total_minor=sum(line.payer_share_minor for line in lines),
        service_date=service_date,
        created_at=now_utc(),
        idempotency_key=idempotency_key or None,
        request_hash=request_hash,
    )
    session.add(claim)
    for sequence, line in enumerate(lines, start=1):
        session.add(
            store.ClaimLineRow(
                claim_id=claim.claim_id,
                sequence=sequence,
                system=line.system,
                code=line.code,
                display=line.display,
                submitted_minor=line.payer_share_minor,
                charge_id=line.charge_id,
            )
        )
    session.flush()
    return claim


def begin_submission(
    session: Session,
    outbox: OutboxWriter,
    *,
    claim_id: str,
    expected_version: int,
    from_status: str,
    note: str = "",
) -> tuple[domain.ClaimSubmission, domain.PolicyTerms]:
    """Mark a claim submitted as a new attempt and publish ClaimSubmitted.

    ``from_status`` is the status the claim must be in: "draft" for a first
    submission, "denied" for a resubmission.
    """
    claim = load_claim(session, claim_id)
    check_version("claim", claim_id, claim.version, expected_version)
    if claim.status != from_status:
        raise InvalidState(
            f"claim {claim_id} is {claim.status}; this call needs a "
            f"{from_status} claim",
            reason="CLAIM_WRONG_STATUS",
        )
    policy = session.get(store.PolicyRow, claim.policy_id)
    if policy is None:
        raise PolicyNotFound(
            f"policy {claim.policy_id} of claim {claim_id} not found",
            reason="POLICY_NOT_FOUND",
        )

    claim.attempt += 1
    claim.status = "submitted"
    claim.version += 1
    if note:
        claim.note = note
    session.add(claim)
    outbox.add(
        session,
        events.ClaimSubmitted(
            context=event_context(),
            claim_id=claim.claim_id,
            patient_id=claim.patient_id,
            payer_id=claim.payer_id,
            invoice_id=claim.invoice_id,
            total=convert.money(claim.currency, claim.total_minor),
            attempt=claim.attempt,
        ),
        key=claim.patient_id,
        subject=claim.claim_id,
    )

    submission = domain.ClaimSubmission(
        claim_id=claim.claim_id,
        attempt=claim.attempt,
        patient_id=claim.patient_id,
        payer_id=claim.payer_id,
        member_id=policy.member_id,
        currency=claim.currency,
        service_date=store.as_utc(claim.service_date),
        lines=tuple(
            domain.ClaimLineInput(
                line.sequence, line.system, line.code, line.submitted_minor
            )
            for line in store.claim_lines(session, claim_id)
        ),
    )
    # Earlier attempts of this claim were denied, so only other claims count
    # against the benefit limit.
    approved = store.approved_on_policy(session, policy.policy_id)
    return submission, store.policy_terms(policy, approved - claim.approved_minor)


def record_adjudication(
    session: Session,
    outbox: OutboxWriter,
    *,
    claim_id: str,
    attempt: int,
    result: domain.AdjudicationResult,
    expected_version: int = 0,
) -> store.ClaimRow:
    """Store a payer's adjudication, move the shares, publish ClaimAdjudicated.

    What the payer does not approve becomes the patient's responsibility on
    the invoice.
    """
    claim = load_claim(session, claim_id)
    check_version("claim", claim_id, claim.version, expected_version)
    if claim.status != "submitted" or claim.attempt != attempt:
        raise InvalidState(
            f"claim {claim_id} is {claim.status} at attempt {claim.attempt}; an "
            f"adjudication for attempt {attempt} needs a submitted claim at that "
            "attempt",
            reason="CLAIM_NOT_AWAITING_ADJUDICATION",
        )

    for line in store.claim_lines(session, claim_id):
        line.approved_minor = min(
            line.submitted_minor, result.approved_by_line.get(line.sequence, 0)
        )
        session.add(line)
    approved = min(claim.total_minor, result.approved_minor)
    outcome = domain.outcome_for(approved, claim.total_minor)
    claim.status = outcome
    claim.approved_minor = approved
    claim.version += 1
    session.add(claim)

    invoice = load_invoice(session, claim.invoice_id)
    invoice.payer_responsibility_minor = approved
    invoice.patient_responsibility_minor = invoice.total_minor - approved
    if invoice.status != "void":
        settled = invoice.patient_paid_minor >= invoice.patient_responsibility_minor
        invoice.status = "paid" if settled else "issued"
    invoice.version += 1
    session.add(invoice)

    session.add(
        store.AdjudicationRow(
            claim_id=claim_id,
            attempt=attempt,
            outcome=outcome,
            approved_minor=approved,
            patient_responsibility_minor=invoice.patient_responsibility_minor,
            reasons="\n".join(result.reasons),
            adjudicated_at=now_utc(),
        )
    )
    outbox.add(
        session,
        events.ClaimAdjudicated(
            context=event_context(),
            claim_id=claim_id,
            patient_id=claim.patient_id,
            payer_id=claim.payer_id,
            outcome=convert.OUTCOMES[outcome],
            approved=convert.money(claim.currency, approved),
            patient_responsibility=convert.money(
                claim.currency, invoice.patient_responsibility_minor
            ),
            reasons=list(result.reasons),
        ),
        key=claim.patient_id,
        subject=claim_id,
    )
    return claim

