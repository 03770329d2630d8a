"""Import FHIR R4 Coverage, Claim and ExplanationOfBenefit resources.

Claims import as historical claims and each ExplanationOfBenefit as the
adjudication of the claim it names. FHIR amounts are JSON decimals, so the
bundle is parsed with ``Decimal`` for every number. Each amount is converted
to minor units by ``domain.decimal_to_minor_units`` (half up to the cent), and
the exact text is stored next to it. The currency is kept as the bundle gives
it.
Every imported row carries its source id under a unique constraint, so the
same bundle imported twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeAlias

from sqlmodel import Session, select

from hin.common.v1 import fhir_pb2
from svc_billing import domain, store
from svc_billing.ledger import new_id, now_utc

logger = logging.getLogger(__name__)

Status: TypeAlias = fhir_pb2.FhirImportStatus.ValueType
IMPORTED = fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED
DUPLICATE = fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE
REJECTED = fhir_pb2.FHIR_IMPORT_STATUS_REJECTED
IGNORED = fhir_pb2.FHIR_IMPORT_STATUS_IGNORED

#: Order of import: a claim must exist before its ExplanationOfBenefit.
OWNED_TYPES = ("Coverage", "Claim", "ExplanationOfBenefit")


class BundleError(ValueError):
    """The bytes are not a FHIR Bundle in JSON."""


@dataclass(frozen=True)
class Entry:
    """One bundle entry: the resource and the references that name it."""

    resource: dict[str, Any]
    full_url: str

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType", ""))

    @property
    def source_id(self) -> str:
        resource_id = self.resource.get("id")
        return str(resource_id) if resource_id else self.full_url


def parse_bundle(data: bytes) -> list[Entry]:
    """Parse a Bundle with every JSON number read as Decimal.

    Raises:
        BundleError: The data is not JSON or not a Bundle.
    """
    try:
        document = json.loads(data, parse_float=Decimal, parse_int=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise BundleError("bundle is not a FHIR Bundle (resourceType must be Bundle)")
    entries = []
    for item in document.get("entry") or []:
        resource = item.get("resource") if isinstance(item, dict) else None
        if isinstance(resource, dict):
            entries.append(Entry(resource, str(item.get("fullUrl", ""))))
    return entries


class Importer:
    """Import one bundle's billing resources inside one transaction."""

    def __init__(
        self, session: Session, *, references: Mapping[str, str], source: str
    ) -> None:
        self._session = session
        self._references = references
        self._source = source
        #: Claim source ids to claim ids, for claims imported by this call.
        self._claims: dict[str, str] = {}

    def run(self, entries: list[Entry]) -> list[fhir_pb2.FhirImportOutcome]:
        """Import every entry and return one outcome per entry, in bundle order."""
        outcomes: dict[int, fhir_pb2.FhirImportOutcome] = {}
        for resource_type in OWNED_TYPES:
            for index, entry in enumerate(entries):
                if entry.resource_type == resource_type:
                    outcomes[index] = self._import_one(entry)
        for index, entry in enumerate(entries):
            if index not in outcomes:
                outcomes[index] = fhir_pb2.FhirImportOutcome(
                    resource_type=entry.resource_type,
                    source_id=entry.source_id,
                    status=IGNORED,
                    reason="billing imports Coverage, Claim and ExplanationOfBenefit",
                )
        return [outcomes[index] for index in range(len(entries))]

    def _import_one(self, entry: Entry) -> fhir_pb2.FhirImportOutcome:
        status: fhir_pb2.FhirImportStatus.ValueType
        outcome = fhir_pb2.FhirImportOutcome(
            resource_type=entry.resource_type, source_id=entry.source_id
        )
        try:
            if entry.resource_type == "Coverage":
                status, assigned = self._coverage(entry)
            elif entry.resource_type == "Claim":
                status, assigned = self._claim(entry)
            else:
                status, assigned = self._explanation(entry)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            outcome.status = REJECTED
            outcome.reason = str(exc) or type(exc).__name__
            logger.warning(
                "fhir resource rejected",
                extra={
                    "resource_type": entry.resource_type,
                    "source_id": entry.source_id,
                    "error": outcome.reason,
                },
            )
            return outcome
        outcome.status = status
        outcome.assigned_id = assigned
        return outcome

    def _patient(self, reference: dict[str, Any] | None, field: str) -> str:
        """Map a patient reference to the HIN patient id records assigned."""
        text = str((reference or {}).get("reference", ""))
        patient_id = self._references.get(text, "")
        if not patient_id:
            raise ValueError(
                f"{field} reference {text or '(missing)'} is not in "
                "resolved_references; import the patient through records first"
            )
        return store.resolve_patient(self._session, patient_id)

    # Coverage --------------------------------------------------------------

    def _coverage(self, entry: Entry) -> tuple[Status, str]:
        source_id = f"Coverage/{entry.source_id}"
        existing = self._session.exec(
            select(store.PolicyRow).where(store.PolicyRow.source_id == source_id)
        ).first()
        if existing is not None:
            return DUPLICATE, existing.policy_id

        resource = entry.resource
        patient_id = self._patient(resource.get("beneficiary"), "beneficiary")
        payors = resource.get("payor") or [{}]
        payer_id = str(payors[0].get("reference") or payors[0].get("display") or "")
        if not payer_id:
            raise ValueError("Coverage.payor is missing")
        terms = coverage_costs(resource.get("costToBeneficiary") or [])
        period = resource.get("period") or {}
        row = store.PolicyRow(
            policy_id=new_id(),
            patient_id=patient_id,
            payer_id=payer_id,
            member_id=str(resource.get("subscriberId", "")),
            plan_code=plan_code(resource),
            coverage_basis_points=terms.coverage_basis_points,
            currency=terms.currency,
            copay_minor=terms.copay_minor,
            deductible_minor=terms.deductible_minor,
            valid_from=parse_moment(period.get("start")) or dt.datetime(
                1900, 1, 1, tzinfo=dt.UTC
            ),
            valid_to=parse_moment(period.get("end")),
            source="fhir",
            source_id=source_id,
        )
        self._session.add(row)
        self._session.flush()
        return IMPORTED, row.policy_id

    # Claim -----------------------------------------------------------------

    def _claim(self, entry: Entry) -> tuple[Status, str]:
        source_id = f"Claim/{entry.source_id}"
        existing = self._session.exec(
            select(store.ClaimRow).where(store.ClaimRow.source_id == source_id)
        ).first()
        if existing is not None:
            self._remember_claim(entry, existing.claim_id)
            return DUPLICATE, existing.claim_id

        resource = entry.resource
        patient_id = self._patient(resource.get("patient"), "patient")
        total = resource.get("total") or {}
        if "value" not in total or not total.get("currency"):
            raise ValueError("Claim.total needs a value and a currency")
        value = Decimal(total["value"])
        currency = str(total["currency"])
        created = parse_moment(resource.get("created")) or now_utc()
        period = resource.get("billablePeriod") or {}
        row = store.ClaimRow(
            claim_id=new_id(),
            patient_id=patient_id,
            payer_id=insurer_name(resource),
            status="historical",
            currency=currency,
            total_minor=domain.decimal_to_minor_units(value),
            service_date=parse_moment(period.get("start")) or created,
            created_at=created,
            source_id=source_id,
            source_total=str(value),
        )
        self._session.add(row)
        for item in resource.get("item") or []:
            coding = ((item.get("productOrService") or {}).get("coding") or [{}])[0]
            net = (item.get("net") or {}).get("value")
            self._session.add(
                store.ClaimLineRow(
                    claim_id=row.claim_id,
                    sequence=int(item.get("sequence", 0)),
                    system=str(coding.get("system", "")),
                    code=str(coding.get("code", "")),
                    display=str(coding.get("display", "")),
                    submitted_minor=(
                        0 if net is None
                        else domain.decimal_to_minor_units(Decimal(net))
                    ),
                )
            )
        self._session.flush()
        self._remember_claim(entry, row.claim_id)
        return IMPORTED, row.claim_id

    def _remember_claim(self, entry: Entry, claim_id: str) -> None:
        for name in (entry.full_url, f"Claim/{entry.source_id}"):
            if name:
                self._claims[name] = claim_id

    # ExplanationOfBenefit ---------------------------------------------------

    def _explanation(self, entry: Entry) -> tuple[Status, str]:
        source_id = f"ExplanationOfBenefit/{entry.source_id}"
        existing = self._session.exec(
            select(store.AdjudicationRow).where(
                store.AdjudicationRow.source_id == source_id
            )
        ).first()
        if existing is not None:
            return DUPLICATE, existing.claim_id

        resource = entry.resource
        reference = str((resource.get("claim") or {}).get("reference", ""))
        claim = self._find_claim(reference)
        payment = (resource.get("payment") or {}).get("amount") or {}
        if "value" not in payment:
            raise ValueError("ExplanationOfBenefit.payment.amount is missing")
        value = Decimal(payment["value"])
        currency = str(payment.get("currency") or claim.currency)
        if currency != claim.currency:
            raise ValueError(
                f"payment currency {currency} differs from claim currency "
                f"{claim.currency}"
            )
        approved = domain.decimal_to_minor_units(value)
        outcome = domain.outcome_for(approved, claim.total_minor)
        claim.approved_minor = approved
        claim.attempt = max(claim.attempt, 1)
        if not claim.payer_id:
            claim.payer_id = insurer_name(resource)
        self._session.add(claim)
        self._session.add(
            store.AdjudicationRow(
                claim_id=claim.claim_id,
                attempt=claim.attempt,
                outcome=outcome,
                approved_minor=approved,
                patient_responsibility_minor=max(0, claim.total_minor - approved),
                reasons=f"imported from {self._source}" if self._source else "",
                adjudicated_at=parse_moment(resource.get("created")) or now_utc(),
                source_id=source_id,
                source_payment=str(value),
            )
        )
        self._session.flush()
        return IMPORTED, claim.claim_id

    def _find_claim(self, reference: str) -> store.ClaimRow:
        claim_id = self._claims.get(reference)
        if not claim_id and reference:
            source_id = "Claim/" + reference.removeprefix("Claim/").removeprefix(
                "urn:uuid:"
            )
            row = self._session.exec(
                select(store.ClaimRow).where(store.ClaimRow.source_id == source_id)
            ).first()
            claim_id = row.claim_id if row else ""
        claim = self._session.get(store.ClaimRow, claim_id) if claim_id else None
        if claim is None:
            raise ValueError(
                f"claim {reference or '(missing)'} is not imported; send the "
                "Claim in the same bundle or an earlier one"
            )
        return claim


@dataclass(frozen=True)
class CoverageCosts:
    coverage_basis_points: int
    copay_minor: int
    deductible_minor: int
    currency: str


def coverage_costs(costs: list[dict[str, Any]]) -> CoverageCosts:
    """Read co-insurance, co-payment and deductible from costToBeneficiary.

    Type codes follow the FHIR coverage-copay-type code system: "copaypct"
    (percentage the patient pays), "copay" and "deductible" (money).
    """
    patient_percent = Decimal(0)
    copay = deductible = 0
    currency = domain.DEFAULT_CURRENCY
    for cost in costs:
        codes = {
            str(coding.get("code", ""))
            for coding in (cost.get("type") or {}).get("coding") or []
        }
        quantity = cost.get("valueQuantity")
        amount = cost.get("valueMoney")
        if "copaypct" in codes and quantity is not None:
            patient_percent = Decimal(quantity["value"])
        elif amount is not None and codes & {"copay", "deductible"}:
            currency = str(amount.get("currency") or currency)
            minor = domain.decimal_to_minor_units(Decimal(amount["value"]))
            if "copay" in codes:
                copay = minor
            else:
                deductible = minor
    if not 0 <= patient_percent <= 100:
        raise ValueError(f"copaypct {patient_percent} is not from 0 to 100")
    basis_points = domain.BASIS_POINTS_PER_WHOLE - domain.decimal_to_minor_units(
        patient_percent
    )
    return CoverageCosts(basis_points, copay, deductible, currency)


def plan_code(resource: dict[str, Any]) -> str:
    for item in resource.get("class") or []:
        codes = {c.get("code") for c in (item.get("type") or {}).get("coding") or []}
        if "plan" in codes:
            return str(item.get("value", ""))
    return ""


def insurer_name(resource: dict[str, Any]) -> str:
    """Return the insurer's reference or name from a Claim or EOB."""
    insurer = resource.get("insurer") or {}
    if insurer:
        return str(insurer.get("reference") or insurer.get("display") or "")
    for insurance in resource.get("insurance") or []:
        coverage = insurance.get("coverage") or {}
        name = coverage.get("display") or ""
        if name:
            return str(name)
    return ""


def parse_moment(text: object) -> dt.datetime | None:
    """Parse a FHIR date or dateTime; a date means midnight UTC."""
    if not text:
        return None
    value = str(text)
    if len(value) == 10:
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
