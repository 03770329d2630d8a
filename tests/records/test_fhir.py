"""ImportFhir and ExportPatient on the Synthea bundles and on crafted ones.

Expected counts are computed here from the bundle JSON, independently of
the service's own parsing.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle

from hin.common.v1 import fhir_pb2
from hin.records.v1 import records_service_pb2 as pb

from .conftest import (
    STOP_GRACE_SECONDS,
    RecordsServer,
    records_client,
    start_records,
)

IMPORTED = fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED
DUPLICATE = fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE
REJECTED = fhir_pb2.FHIR_IMPORT_STATUS_REJECTED
RECORDS_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "Practitioner",
    "Organization",
)


def synthea_files(shared_data: Path) -> list[Path]:
    """Return the bundles, Practitioner/Organization-only bundles first.

    Encounters of some bundles reference their practitioners conditionally
    (Practitioner?identifier=...), so those must be known first.
    """
    files = sorted((shared_data / "fhir" / "synthea").glob("*.json"))
    return sorted(files, key=lambda f: ("Information" not in f.name, f.name))


def expected_counts(files: list[Path]) -> dict[str, tuple[int, int]]:
    """Return, per resource type, (resources read, distinct resources)."""
    read: Counter[str] = Counter()
    distinct: dict[str, set[Any]] = {t: set() for t in RECORDS_TYPES}
    for path in files:
        for entry in json.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            if kind not in RECORDS_TYPES:
                continue
            read[kind] += 1
            if kind in ("Practitioner", "Organization"):
                first = resource["identifier"][0]
                distinct[kind].add((first["system"], first["value"]))
            else:
                distinct[kind].add(resource["id"])
    return {kind: (read[kind], len(distinct[kind])) for kind in RECORDS_TYPES}


@pytest.fixture(scope="module")
async def imported(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, shared_data: Path
) -> AsyncIterator[tuple[RecordsServer, list[Counter[tuple[str, int]]], Path]]:
    """Records with every Synthea bundle imported twice; per-round outcomes."""
    state = tmp_path_factory.mktemp("records-fhir")
    host, channel = await start_records(state, kafka_bootstrap)
    server = records_client(host, channel, state)
    rounds = []
    for _ in range(2):
        counts: Counter[tuple[str, int]] = Counter()
        for path in synthea_files(shared_data):
            response = await server.stub.ImportFhir(
                pb.ImportFhirRequest(bundle=path.read_bytes(), source=path.name),
                metadata=server.admin,
            )
            counts.update((o.resource_type, o.status) for o in response.outcomes)
        rounds.append(counts)
    yield server, rounds, shared_data
    await channel.close()
    await host.stop(grace=STOP_GRACE_SECONDS)


@pytest.mark.parametrize("resource_type", RECORDS_TYPES)
async def test_first_import_counts_match_json(
    imported: Any, resource_type: str
) -> None:
    _, rounds, shared_data = imported
    read, distinct = expected_counts(synthea_files(shared_data))[resource_type]
    assert rounds[0][(resource_type, IMPORTED)] == distinct
    assert rounds[0][(resource_type, DUPLICATE)] == read - distinct
    assert rounds[0][(resource_type, REJECTED)] == 0


@pytest.mark.parametrize("resource_type", RECORDS_TYPES)
async def test_second_import_adds_nothing(imported: Any, resource_type: str) -> None:
    _, rounds, shared_data = imported
    read, _ = expected_counts(synthea_files(shared_data))[resource_type]
    assert rounds[1][(resource_type, IMPORTED)] == 0
    assert rounds[1][(resource_type, DUPLICATE)] == read


async def test_patient_list_has_twenty(imported: Any) -> None:
    server, _, shared_data = imported
    response = await server.stub.ListPatients(
        pb.ListPatientsRequest(), metadata=server.doctor
    )
    expected = sum(
        1
        for path in synthea_files(shared_data)
        for entry in json.loads(path.read_bytes())["entry"]
        if entry["resource"]["resourceType"] == "Patient"
    )
    assert response.page.total_size == expected


def source_patients(shared_data: Path) -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for path in synthea_files(shared_data)
        for entry in json.loads(path.read_bytes())["entry"]
        if entry["resource"]["resourceType"] == "Patient"
    ]


async def export_of(server: RecordsServer, source: dict[str, Any]) -> dict[str, Any]:
    first = source["identifier"][0]
    found = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(
            identifier={"system": first["system"], "value": first["value"]}
        ),
        metadata=server.doctor,
    )
    assert len(found.patients) == 1
    response = await server.stub.ExportPatient(
        pb.ExportPatientRequest(patient_id=found.patients[0].patient_id),
        metadata=server.doctor,
    )
    return json.loads(response.bundle)


async def test_every_export_validates_and_equals_source(imported: Any) -> None:
    server, _, shared_data = imported
    sources = source_patients(shared_data)
    assert len(sources) == 20
    for source in sources:
        bundle = await export_of(server, source)
        # fhir.resources 8.3 ships R5 (default), R4B and STU3 models but no
        # R4 package; R4B is the closest to the R4 that Synthea writes.
        Bundle.model_validate(bundle)
        patient = bundle["entry"][0]["resource"]
        assert patient["resourceType"] == "Patient"
        assert [(i["system"], i["value"]) for i in patient["identifier"]] == [
            (i["system"], i["value"]) for i in source["identifier"]
        ]
        assert patient["name"] == source["name"]
        assert patient["birthDate"] == source["birthDate"]
        assert patient["gender"] == source["gender"]
        assert ("deceasedDateTime" in patient) == ("deceasedDateTime" in source)


async def test_export_keeps_non_ascii_names(imported: Any) -> None:
    server, _, shared_data = imported
    source = next(
        s
        for s in source_patients(shared_data)
        if any("ó" in n.get("family", "") for n in s["name"])
    )
    bundle = await export_of(server, source)
    assert bundle["entry"][0]["resource"]["name"] == source["name"]


async def test_export_keeps_deceased_time(imported: Any) -> None:
    server, _, shared_data = imported
    for source in source_patients(shared_data):
        if "deceasedDateTime" not in source:
            continue
        patient = (await export_of(server, source))["entry"][0]["resource"]
        assert datetime.datetime.fromisoformat(
            patient["deceasedDateTime"]
        ) == datetime.datetime.fromisoformat(source["deceasedDateTime"])


async def test_export_keeps_synthea_extensions(imported: Any) -> None:
    server, _, shared_data = imported
    source = source_patients(shared_data)[0]
    patient = (await export_of(server, source))["entry"][0]["resource"]
    assert [e["url"] for e in patient["extension"]] == [
        e["url"] for e in source["extension"]
    ]


async def test_export_holds_the_chart(imported: Any) -> None:
    server, _, shared_data = imported
    path = next(
        p for p in synthea_files(shared_data) if p.name.startswith("Jorge_Brekke")
    )
    entries = json.loads(path.read_bytes())["entry"]
    expected = Counter(
        e["resource"]["resourceType"]
        for e in entries
        if e["resource"]["resourceType"]
        in ("Encounter", "Condition", "AllergyIntolerance", "MedicationRequest")
    )
    source = next(
        e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient"
    )
    bundle = await export_of(server, source)
    exported = Counter(
        e["resource"]["resourceType"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] in expected
    )
    assert exported == expected


# Crafted bundles -------------------------------------------------------------


def bundle_of(*resources: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources
            ],
        }
    ).encode()


def patient_resource(identifier: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"00000000-0000-4000-8000-{identifier[-12:].rjust(12, '0')}",
        "identifier": [{"system": "urn:test:crafted", "value": identifier}],
        "name": [{"family": "Crafted", "given": ["Case"]}],
        "gender": "female",
        "birthDate": "1990-01-01",
        **extra,
    }


async def import_outcomes(
    server: RecordsServer, data: bytes
) -> list[fhir_pb2.FhirImportOutcome]:
    response = await server.stub.ImportFhir(
        pb.ImportFhirRequest(bundle=data, source="crafted.json"), metadata=server.admin
    )
    return list(response.outcomes)


async def test_modifier_extension_rejects_resource(imported: Any) -> None:
    server, _, _ = imported
    patient = patient_resource(
        "111111111111",
        modifierExtension=[{"url": "http://example.org/unknown", "valueBoolean": True}],
    )
    outcomes = await import_outcomes(server, bundle_of(patient))
    assert [o.status for o in outcomes] == [REJECTED]
    assert "modifierExtension" in outcomes[0].reason
    found = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(
            identifier={"system": "urn:test:crafted", "value": "111111111111"}
        ),
        metadata=server.doctor,
    )
    assert list(found.patients) == []


async def test_zoneless_datetime_rejects_resource(imported: Any) -> None:
    server, _, _ = imported
    patient = patient_resource("222222222222")
    condition = {
        "resourceType": "Condition",
        "id": "00000000-0000-4000-8000-c00000000002",
        "subject": {"reference": f"urn:uuid:{patient['id']}"},
        "code": {"text": "Headache"},
        "onsetDateTime": "2020-01-01T10:00:00",
    }
    outcomes = await import_outcomes(server, bundle_of(patient, condition))
    assert [o.status for o in outcomes] == [IMPORTED, REJECTED]
    assert "onsetDateTime" in outcomes[1].reason
    assert "time zone" in outcomes[1].reason


async def test_unknown_extension_is_exported_back(imported: Any) -> None:
    server, _, _ = imported
    extension = {
        "url": "http://example.org/fhir/favourite-colour",
        "valueString": "teal",
    }
    patient = patient_resource("333333333333", extension=[extension])
    outcomes = await import_outcomes(server, bundle_of(patient))
    assert [o.status for o in outcomes] == [IMPORTED]
    exported = await server.stub.ExportPatient(
        pb.ExportPatientRequest(patient_id=outcomes[0].assigned_id),
        metadata=server.doctor,
    )
    resource = json.loads(exported.bundle)["entry"][0]["resource"]
    assert resource["extension"] == [extension]


async def test_unknown_conditional_reference_rejected(imported: Any) -> None:
    server, _, _ = imported
    patient = patient_resource("444444444444")
    encounter = {
        "resourceType": "Encounter",
        "id": "00000000-0000-4000-8000-e00000000004",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": f"urn:uuid:{patient['id']}"},
        "participant": [
            {
                "individual": {
                    "reference": "Practitioner?identifier="
                    "http://hl7.org/fhir/sid/us-npi|0000000000"
                }
            }
        ],
        "period": {"start": "2020-01-01T10:00:00+02:00"},
    }
    outcomes = await import_outcomes(server, bundle_of(patient, encounter))
    assert [o.status for o in outcomes] == [IMPORTED, REJECTED]
    assert "matches no Practitioner" in outcomes[1].reason


async def test_known_conditional_reference_resolves(imported: Any) -> None:
    server, _, shared_data = imported
    practitioners = json.loads(
        next(
            (shared_data / "fhir" / "synthea").glob("practitionerInformation*")
        ).read_bytes()
    )["entry"]
    npi = practitioners[0]["resource"]["identifier"][0]
    patient = patient_resource("555555555555")
    encounter = {
        "resourceType": "Encounter",
        "id": "00000000-0000-4000-8000-e00000000005",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": f"urn:uuid:{patient['id']}"},
        "participant": [
            {
                "individual": {
                    "reference": "Practitioner?identifier="
                    f"{npi['system']}|{npi['value']}"
                }
            }
        ],
        "period": {"start": "2020-01-01T10:00:00+02:00"},
    }
    outcomes = await import_outcomes(server, bundle_of(patient, encounter))
    assert [o.status for o in outcomes] == [IMPORTED, IMPORTED]
    summary = await server.stub.GetPatientSummary(
        pb.GetPatientSummaryRequest(patient_id=outcomes[0].assigned_id),
        metadata=server.doctor,
    )
    assert summary.summary.encounters[0].practitioner_id != ""


async def test_dangling_urn_reference_rejected(imported: Any) -> None:
    server, _, _ = imported
    condition = {
        "resourceType": "Condition",
        "id": "00000000-0000-4000-8000-c00000000006",
        "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-ffffffffffff"},
        "code": {"text": "Headache"},
    }
    outcomes = await import_outcomes(server, bundle_of(condition))
    assert [o.status for o in outcomes] == [REJECTED]
    assert "matches no entry" in outcomes[0].reason


async def test_invalid_bundle_names_field(imported: Any) -> None:
    server, _, _ = imported
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await import_outcomes(server, b"{not json")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bundle" in (caught.value.details() or "")


async def test_unowned_types_are_ignored(imported: Any) -> None:
    server, _, _ = imported
    observation = {
        "resourceType": "Observation",
        "id": "00000000-0000-4000-8000-0b0000000007",
        "status": "final",
        "code": {"text": "Heart rate"},
    }
    outcomes = await import_outcomes(server, bundle_of(observation))
    assert [o.status for o in outcomes] == [fhir_pb2.FHIR_IMPORT_STATUS_IGNORED]


async def test_malformed_entries_get_outcomes(imported: Any) -> None:
    server, _, _ = imported
    data = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                True,
                {"resource": 5},
                {
                    "fullUrl": 3,
                    "resource": {"resourceType": "Patient", "identifier": 5},
                },
                {"resource": {"resourceType": "Encounter", "class": [], "id": "e-x"}},
            ],
        }
    ).encode()
    outcomes = await import_outcomes(server, data)
    assert [o.status for o in outcomes] == [
        fhir_pb2.FHIR_IMPORT_STATUS_IGNORED,
        fhir_pb2.FHIR_IMPORT_STATUS_IGNORED,
        REJECTED,
        REJECTED,
    ]


async def test_conditional_patient_reference_resolves(imported: Any) -> None:
    server, _, _ = imported
    patient = patient_resource("666666666666")
    first = await import_outcomes(server, bundle_of(patient))
    condition = {
        "resourceType": "Condition",
        "id": "00000000-0000-4000-8000-c00000000066",
        "subject": {"reference": "Patient?identifier=urn:test:crafted%7C666666666666"},
        "code": {"text": "Sprain"},
    }
    outcomes = await import_outcomes(server, bundle_of(condition))
    assert [o.status for o in outcomes] == [IMPORTED]
    summary = await server.stub.GetPatientSummary(
        pb.GetPatientSummaryRequest(patient_id=first[0].assigned_id),
        metadata=server.doctor,
    )
    assert [c.code.text for c in summary.summary.conditions] == ["Sprain"]


async def test_unknown_conditional_patient_hides_value(imported: Any) -> None:
    server, _, _ = imported
    condition = {
        "resourceType": "Condition",
        "id": "00000000-0000-4000-8000-c00000000067",
        "subject": {"reference": "Patient?identifier=urn:test:crafted|777777777777"},
        "code": {"text": "Sprain"},
    }
    outcomes = await import_outcomes(server, bundle_of(condition))
    assert [o.status for o in outcomes] == [REJECTED]
    assert "matches no patient" in outcomes[0].reason
    assert "777777777777" not in outcomes[0].reason
