"""Read models of the chart: summaries, exports and duplicate candidates."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlmodel import Session

from hin.records.v1 import records_service_pb2 as pb
from svc_records import records, store
from svc_records.domain import matching
from svc_records.domain import patients as rules
from svc_records.domain.fhir_export import ChartEntry, export_bundle


def patient_with_links(session: Session, row: store.PatientRow) -> pb.Patient:
    """Build the Patient message of a row, with the ids merged into it."""
    return records.patient_message(
        row, store.merged_patient_ids(session, row.patient_id)
    )


def possible_duplicates(
    session: Session, patient: pb.PatientDemographics
) -> list[pb.DuplicateCandidate]:
    """Return the registered patients that score as duplicates, best first."""
    birth_date = rules.date_to_iso(patient.birth_date)
    if not birth_date:
        # NOTE: without a birth date no candidates are looked up, because
        # matching only scores patients born on the same day.
        return []
    candidates = []
    for row in store.patients_born_on(session, birth_date):
        match = matching.score_match(patient, records.demographics_of(row))
        if matching.is_possible_duplicate(match):
            candidates.append(
                pb.DuplicateCandidate(
                    patient=patient_with_links(session, row),
                    match_score=match.score,
                    matched_fields=match.matched_fields,
                )
            )
    candidates.sort(key=lambda c: (-c.match_score, c.patient.patient_id))
    return candidates


def fill_summary(
    summary: pb.PatientSummary, rows: Sequence[store.ClinicalEntryRow]
) -> None:
    """Add chart entry rows to the summary, under the summary's patient id."""
    targets: dict[str, Callable[[], Any]] = {
        "encounter": summary.encounters.add,
        "condition": summary.conditions.add,
        "allergy": summary.allergies.add,
        "medication": summary.medications.add,
        "observation": summary.observations.add,
    }
    for row in rows:
        message: Any = records.entry_message(row)
        message.patient_id = summary.patient.patient_id
        targets[row.kind]().CopyFrom(message)


def export_patient(
    session: Session, row: store.PatientRow, *, include_clinical: bool
) -> dict[str, Any]:
    """Return the FHIR Bundle of one patient; the chart only when included."""
    rows = store.entries_of_patient(session, row.patient_id) if include_clinical else []
    entries = [
        ChartEntry(
            entry_id=r.entry_id,
            message=records.entry_message(r),
            fhir=json.loads(r.fhir_json) if r.fhir_json else None,
        )
        for r in rows
    ]
    demographics = records.demographics_of(row)
    referenced = _referenced_directory_ids(demographics, entries)
    directory = [
        (d.entry_id, d.resource_type, json.loads(d.fhir_json))
        for d in store.get_directory_entries(session, referenced)
    ]
    return export_bundle(
        patient_id=row.patient_id,
        demographics=demographics,
        patient_fhir=json.loads(row.fhir_json) if row.fhir_json else None,
        entries=entries,
        directory=directory,
    )


def _referenced_directory_ids(
    demographics: pb.PatientDemographics, entries: list[ChartEntry]
) -> set[str]:
    ids = {demographics.managing_organization_id} - {""}
    for entry in entries:
        if entry.fhir is not None:
            text = json.dumps(entry.fhir)
            for resource_type in ("Practitioner", "Organization"):
                ids.update(_ids_after(text, f'"{resource_type}/'))
        message: Any = entry.message
        for field in (
            "practitioner_id",
            "organization_id",
            "requester_practitioner_id",
        ):
            value = getattr(message, field, "")
            if value:
                ids.add(value)
    return ids


def _ids_after(text: str, marker: str) -> set[str]:
    ids = set()
    start = text.find(marker)
    while start != -1:
        end = text.find('"', start + len(marker))
        ids.add(text[start + len(marker) : end])
        start = text.find(marker, end)
    return ids
