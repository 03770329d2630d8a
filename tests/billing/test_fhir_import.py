"""FHIR import of Synthea claims, explanations of benefit and coverage."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import grpc
import pytest

from hin.billing.v1 import billing_service_pb2 as pb
from hin.common.v1 import fhir_pb2
from hin.common.v1 import types_pb2 as types
from tests.billing.conftest import Billing

CENT = Decimal("0.01")


def cents(value: Decimal) -> int:
    """Round a decimal amount half up to the cent, as whole cents."""
    return int(value.quantize(CENT, rounding=ROUND_HALF_UP) * 100)


def bundle_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "fhir" / "synthea").glob("*.json"))


def patient_references(document: dict[str, object]) -> dict[str, str]:
    """Give every Patient of a bundle a HIN id, keyed by its fullUrl."""
    references = {}
    for entry in document.get("entry", []):  # type: ignore[union-attr]
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            references[entry["fullUrl"]] = f"pat-{uuid.uuid4().hex[:12]}"
    return references


def expected_totals(
    document: dict[str, object], references: dict[str, str]
) -> dict[str, tuple[int, int]]:
    """Sum Claim.total and ExplanationOfBenefit.payment per HIN patient id."""
    claimed: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = defaultdict(int)
    for entry in document.get("entry", []):  # type: ignore[union-attr]
        resource = entry["resource"]
        if resource["resourceType"] == "Claim":
            patient = references[resource["patient"]["reference"]]
            claimed[patient] += cents(Decimal(resource["total"]["value"]))
        elif resource["resourceType"] == "ExplanationOfBenefit":
            patient = references[resource["patient"]["reference"]]
            paid[patient] += cents(Decimal(resource["payment"]["amount"]["value"]))
    return {p: (claimed[p], paid[p]) for p in set(claimed) | set(paid)}


@pytest.fixture(scope="module")
async def imported(
    billing: Billing, shared_data: Path
) -> dict[str, object]:
    """Import every Synthea bundle once; return references, totals, outcomes."""
    references: dict[str, str] = {}
    totals: dict[str, tuple[int, int]] = {}
    outcomes: list[fhir_pb2.FhirImportOutcome] = []
    payloads: list[tuple[bytes, dict[str, str], str]] = []
    for path in bundle_files(shared_data):
        data = path.read_bytes()
        document = json.loads(data, parse_float=Decimal)
        bundle_references = patient_references(document)
        references.update(bundle_references)
        totals.update(expected_totals(document, bundle_references))
        payloads.append((data, bundle_references, path.name))
    for data, bundle_references, name in payloads:
        response = await billing.stub.ImportFhir(
            pb.ImportFhirRequest(
                bundle=data, resolved_references=bundle_references, source=name
            ),
            metadata=billing.admin,
        )
        outcomes.extend(response.outcomes)
    return {"payloads": payloads, "totals": totals, "outcomes": outcomes}


async def test_claim_totals_match_bundles(
    billing: Billing, imported: dict[str, object]
) -> None:
    totals: dict[str, tuple[int, int]] = imported["totals"]  # type: ignore[assignment]
    assert len(totals) == 20
    for patient_id, (claimed, paid) in totals.items():
        response = await billing.stub.GetPatientBalance(
            pb.GetPatientBalanceRequest(patient_id=patient_id), metadata=billing.clerk
        )
        [usd] = response.balances
        assert usd.currency == "USD"
        assert usd.claimed.minor_units == claimed, patient_id
        assert usd.claim_approved.minor_units == paid, patient_id


async def test_every_claim_and_eob_imported(imported: dict[str, object]) -> None:
    outcomes: list[fhir_pb2.FhirImportOutcome] = imported["outcomes"]  # type: ignore[assignment]
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for outcome in outcomes:
        counts[outcome.resource_type, outcome.status] += 1
    # Resource counts of the Synthea bundles: 848 claims, 635 EOBs.
    assert counts["Claim", fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED] == 848
    assert counts["ExplanationOfBenefit", fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED] == 635
    assert counts["Patient", fhir_pb2.FHIR_IMPORT_STATUS_IGNORED] == 20
    rejected = [o for o in outcomes if o.status == fhir_pb2.FHIR_IMPORT_STATUS_REJECTED]
    assert rejected == []


async def test_second_import_changes_nothing(
    billing: Billing, imported: dict[str, object]
) -> None:
    payloads: list[tuple[bytes, dict[str, str], str]] = imported["payloads"]  # type: ignore[assignment]
    data, references, name = payloads[0]
    patient_id = next(iter(references.values()))
    before = await billing.stub.GetPatientBalance(
        pb.GetPatientBalanceRequest(patient_id=patient_id), metadata=billing.clerk
    )
    response = await billing.stub.ImportFhir(
        pb.ImportFhirRequest(bundle=data, resolved_references=references, source=name),
        metadata=billing.admin,
    )
    statuses = {
        o.status for o in response.outcomes
        if o.resource_type in ("Claim", "ExplanationOfBenefit")
    }
    assert statuses == {fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE}
    after = await billing.stub.GetPatientBalance(
        pb.GetPatientBalanceRequest(patient_id=patient_id), metadata=billing.clerk
    )
    assert after == before


async def test_historical_claim_adjudication_kept(
    billing: Billing, imported: dict[str, object]
) -> None:
    totals: dict[str, tuple[int, int]] = imported["totals"]  # type: ignore[assignment]
    patient_id = next(p for p, (_, paid) in totals.items() if paid > 0)
    response = await billing.stub.ListClaims(
        pb.ListClaimsRequest(
            patient_id=patient_id, page=types.PageRequest(page_size=500)
        ),
        metadata=billing.clerk,
    )
    claims = list(response.claims)
    assert all(c.status == pb.CLAIM_STATUS_HISTORICAL for c in claims)
    adjudicated = [c for c in claims if c.adjudications]
    assert adjudicated
    assert sum(c.adjudications[0].approved.minor_units for c in adjudicated) == (
        totals[patient_id][1]
    )


def coverage_bundle(patient_url: str) -> bytes:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:cov-1",
                "resource": {
                    "resourceType": "Coverage",
                    "id": f"cov-{uuid.uuid4().hex[:8]}",
                    "status": "active",
                    "subscriberId": "MISR-0042",
                    "beneficiary": {"reference": patient_url},
                    "payor": [{"display": "Misr Insurance"}],
                    "period": {"start": "2026-01-01", "end": "2027-01-01"},
                    "class": [
                        {
                            "type": {"coding": [{"code": "plan"}]},
                            "value": "silver",
                        }
                    ],
                    "costToBeneficiary": [
                        {
                            "type": {"coding": [{"code": "copaypct"}]},
                            "valueQuantity": {"value": 20},
                        },
                        {
                            "type": {"coding": [{"code": "deductible"}]},
                            "valueMoney": {"value": 50.00, "currency": "EGP"},
                        },
                    ],
                },
            },
            {
                "fullUrl": "urn:uuid:cov-2",
                "resource": {
                    "resourceType": "Coverage",
                    "id": "cov-unknown-patient",
                    "beneficiary": {"reference": "urn:uuid:nobody"},
                    "payor": [{"display": "Misr Insurance"}],
                },
            },
        ],
    }
    return json.dumps(bundle).encode()


async def test_coverage_becomes_policy(billing: Billing) -> None:
    patient_id = f"pat-{uuid.uuid4().hex[:12]}"
    response = await billing.stub.ImportFhir(
        pb.ImportFhirRequest(
            bundle=coverage_bundle("urn:uuid:pat-a"),
            resolved_references={"urn:uuid:pat-a": patient_id},
            source="coverage.json",
        ),
        metadata=billing.admin,
    )
    imported_outcome, rejected = response.outcomes
    assert imported_outcome.status == fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED
    assert rejected.status == fhir_pb2.FHIR_IMPORT_STATUS_REJECTED
    assert "resolved_references" in rejected.reason

    policies = await billing.stub.ListPolicies(
        pb.ListPoliciesRequest(patient_id=patient_id), metadata=billing.clerk
    )
    [policy] = policies.policies
    assert policy.coverage_basis_points == 8000
    assert policy.deductible == types.Money(currency="EGP", minor_units=5000)
    assert policy.member_id == "MISR-0042"
    assert policy.plan_code == "silver"
    assert policy.source == "fhir"


async def test_invalid_bundle_names_field(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ImportFhir(
            pb.ImportFhirRequest(bundle=b"{not json"), metadata=billing.admin
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_import_needs_admin_role(billing: Billing) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.ImportFhir(
            pb.ImportFhirRequest(bundle=coverage_bundle("urn:uuid:pat-b")),
            metadata=billing.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
