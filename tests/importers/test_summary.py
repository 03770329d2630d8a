"""ImportSummary counting and rendering, from hand-made outcomes."""

from __future__ import annotations

from collections import Counter

from hin.common.v1 import fhir_pb2
from mesh.network.importers import ImportSummary, TypeCounts

IMPORTED = fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED
REJECTED = fhir_pb2.FHIR_IMPORT_STATUS_REJECTED
IGNORED = fhir_pb2.FHIR_IMPORT_STATUS_IGNORED


def counts(*outcomes: tuple[int, str]) -> TypeCounts:
    result = TypeCounts()
    for status, reason in outcomes:
        result.add(fhir_pb2.FhirImportOutcome(status=status, reason=reason))
    return result


def summary() -> ImportSummary:
    result = ImportSummary(
        files=["a.json"],
        read=Counter({"Encounter": 3, "Claim": 2}),
        skipped_services=["billing"],
    )
    result.services["records"] = {
        "Encounter": counts((IMPORTED, ""), (IMPORTED, ""), (REJECTED, "bad period")),
        "Claim": counts((IGNORED, ""), (IGNORED, "")),
    }
    result.services["appointments"] = {
        "Encounter": counts((IMPORTED, ""), (IMPORTED, ""), (IMPORTED, "")),
    }
    return result


def test_shared_type_counted_at_first_service() -> None:
    encounter = summary().resources()["Encounter"]
    assert encounter["service"] == "records"
    assert encounter["imported"] == 2
    assert encounter["rejected"] == 1
    assert encounter["rejected_reasons"] == {"bad period": 1}
    assert encounter["not_imported"] == 0


def test_type_nobody_takes_is_not_imported() -> None:
    claim = summary().resources()["Claim"]
    assert claim["service"] == ""
    assert claim["not_imported"] == 2


def test_json_keeps_every_service() -> None:
    data = summary().to_json()
    assert data["services"]["appointments"]["Encounter"]["imported"] == 3
    assert data["skipped_services"] == ["billing"]


def test_table_lists_types_and_notes() -> None:
    lines = summary().table().splitlines()
    assert lines[0].split() == [
        "resource",
        "type",
        "service",
        "read",
        "imported",
        "duplicate",
        "rejected",
        "not",
        "imported",
    ]
    assert lines[1].split() == ["Claim", "-", "2", "0", "0", "0", "2"]
    assert lines[2].split() == ["Encounter", "records", "3", "2", "0", "1", "0"]
    assert "billing is not running" in lines[3]
    assert lines[4] == "rejected Encounter (1): bad period"
