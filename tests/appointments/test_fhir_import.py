"""ImportFhir with every Synthea bundle of the shared data, twice."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.common.v1 import fhir_pb2
from mesh.runtime.events import outbox_table
from svc_appointments.store import AppointmentRow, LocationRow, PractitionerRow

from .conftest import Running

pytestmark = pytest.mark.asyncio(loop_scope="session")

IMPORTED = fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED
DUPLICATE = fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE
REJECTED = fhir_pb2.FHIR_IMPORT_STATUS_REJECTED
NPI = "http://hl7.org/fhir/sid/us-npi"


def bundle_files(shared_data: Path) -> list[Path]:
    """Return the bundles, companion bundles (no patient) first.

    Encounters of some bundles refer to their practitioners conditionally by
    NPI, and those practitioners live in the companion bundles.
    """
    files = sorted((shared_data / "fhir" / "synthea").glob("*.json"))
    companions = [f for f in files if "Information" in f.name]
    return companions + [f for f in files if f not in companions]


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        entry
        for entry in bundle.get("entry", [])
        if entry["resource"]["resourceType"] == resource_type
    ]


def patient_references(bundle: dict[str, Any]) -> dict[str, str]:
    """Map each Patient fullUrl to an id standing in for records' id."""
    return {
        entry["fullUrl"]: f"hin-patient-{entry['resource']['id']}"
        for entry in resources(bundle, "Patient")
    }


async def import_all(service: Running, files: list[Path]) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for path in files:
        payload = path.read_bytes()
        response = await service.stub.ImportFhir(
            pb.ImportFhirRequest(
                bundle=payload,
                resolved_references=patient_references(json.loads(payload)),
                source=path.name,
            ),
            metadata=service.scheduler_auth,
        )
        for outcome in response.outcomes:
            counts[(outcome.resource_type, outcome.status)] += 1
    return counts


def identifier_set(
    bundles: list[dict[str, Any]], resource_type: str
) -> set[tuple[str, str]]:
    """Return the distinct identifiers of one resource type in the bundles."""
    return {
        (identifier["system"], identifier["value"])
        for bundle in bundles
        for entry in resources(bundle, resource_type)
        for identifier in entry["resource"].get("identifier", [])
    }


def count_rows(service: Running, statement: Any) -> int:
    with service.host.db.transaction() as session:
        return int(session.execute(statement).scalar_one())


async def test_import_counts_match_source_files(
    service: Running, shared_data: Path
) -> None:
    files = bundle_files(shared_data)
    bundles = [json.loads(path.read_bytes()) for path in files]
    # One practitioner per NPI: two resource ids of the data share one NPI.
    expected_practitioners = {
        (identifier["system"], identifier["value"])
        for bundle in bundles
        for entry in resources(bundle, "Practitioner")
        for identifier in entry["resource"]["identifier"]
        if identifier["system"] == NPI
    }
    expected_organizations = identifier_set(bundles, "Organization")
    expected_locations = identifier_set(bundles, "Location")
    expected_encounters = {
        entry["resource"]["id"]
        for bundle in bundles
        for entry in resources(bundle, "Encounter")
    }

    first = await import_all(service, files)
    second = await import_all(service, files)

    assert first[("Practitioner", IMPORTED)] == len(expected_practitioners)
    assert first[("Encounter", IMPORTED)] == len(expected_encounters)
    assert first[("Encounter", REJECTED)] == 0
    assert first[("Organization", IMPORTED)] == len(expected_organizations)
    assert first[("Location", IMPORTED)] == len(expected_locations)
    assert first[("Location", REJECTED)] == 0
    assert sum(n for (_, status), n in second.items() if status == IMPORTED) == 0
    assert second[("Encounter", DUPLICATE)] == len(expected_encounters)
    assert count_rows(service, select(func.count()).select_from(PractitionerRow)) == (
        len(expected_practitioners)
    )
    assert count_rows(
        service,
        select(func.count())
        .select_from(AppointmentRow)
        .where(AppointmentRow.imported, AppointmentRow.status == "completed"),  # type: ignore[arg-type]
    ) == len(expected_encounters)


async def test_import_emits_no_events(service: Running, shared_data: Path) -> None:
    files = bundle_files(shared_data)
    await import_all(service, files)

    completed = count_rows(
        service,
        select(func.count())
        .select_from(outbox_table)
        .where(outbox_table.c.event_type == "hin.appointments.v1.AppointmentCompleted"),
    )

    assert completed == 0


async def test_locations_linked_to_organizations(
    service: Running, shared_data: Path
) -> None:
    await import_all(service, bundle_files(shared_data))

    unlinked = count_rows(
        service,
        select(func.count())
        .select_from(LocationRow)
        .where(LocationRow.organization_id == ""),  # type: ignore[arg-type]
    )
    locations = count_rows(service, select(func.count()).select_from(LocationRow))

    # Every Location of the data names its organization by identifier.
    assert locations > 0
    assert unlinked == 0


async def test_conditional_practitioner_reference_resolved(
    service: Running, shared_data: Path
) -> None:
    files = bundle_files(shared_data)
    await import_all(service, files)
    path = next(f for f in files if f.name.startswith("Cecelia952"))
    bundle = json.loads(path.read_bytes())
    encounter = resources(bundle, "Encounter")[0]["resource"]
    reference = encounter["participant"][0]["individual"]["reference"]
    npi = reference.rpartition("|")[2]

    with service.host.db.transaction() as session:
        row = (
            session.execute(
                select(AppointmentRow).where(
                    AppointmentRow.patient_id
                    == f"hin-patient-{bundle_patient_id(bundle)}"  # type: ignore[arg-type]
                )
            )
            .scalars()
            .first()
        )
        assert row is not None
        practitioner = session.get(PractitionerRow, row.practitioner_id)

    assert reference.startswith("Practitioner?identifier=")
    assert practitioner is not None
    assert {"system": NPI, "value": npi, "type_code": ""} in practitioner.identifiers


def bundle_patient_id(bundle: dict[str, Any]) -> str:
    return str(resources(bundle, "Patient")[0]["resource"]["id"])


async def test_import_rejects_unresolved_patient(service: Running) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": "urn:uuid:enc-orphan-1",
                "resource": {
                    "resourceType": "Encounter",
                    "id": "enc-orphan-1",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "subject": {"reference": "urn:uuid:nobody"},
                    "period": {"start": "2020-01-01T10:00:00+02:00"},
                },
            }
        ],
    }

    response = await service.stub.ImportFhir(
        pb.ImportFhirRequest(bundle=json.dumps(bundle).encode(), source="orphan.json"),
        metadata=service.scheduler_auth,
    )

    assert [o.status for o in response.outcomes] == [REJECTED]
    assert "resolved_references" in response.outcomes[0].reason
