"""Import the records resources of one FHIR bundle in one transaction.

Resources are imported type by type in ``IMPORT_ORDER`` so that references
point at resources already imported. Every resource is checked completely
before anything of it is written, so a rejected resource leaves no rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from sqlmodel import Session

from hin.common.v1 import fhir_pb2
from mesh.runtime.validation import Violations
from svc_records import records, store
from svc_records.domain import fhir as fhir_domain
from svc_records.domain import patients as rules
from svc_records.domain.fhir import BundleEntry, FhirError

logger = logging.getLogger(__name__)

Status = fhir_pb2.FhirImportStatus

_CONVERTERS = {
    "Encounter": fhir_domain.encounter_from_fhir,
    "Condition": fhir_domain.condition_from_fhir,
    "AllergyIntolerance": fhir_domain.allergy_from_fhir,
    "MedicationRequest": fhir_domain.medication_from_fhir,
}

#: Conditional references records resolves itself; conditional references to
#: other types (Location, ...) are kept as written.
_DIRECTORY_TYPES = ("Practitioner", "Organization")


class BundleImport:
    """State of one ImportFhir call: outcomes and the references assigned."""

    def __init__(
        self,
        session: Session,
        *,
        outbox: Any,
        entries: list[BundleEntry],
        resolved_references: Mapping[str, str],
    ) -> None:
        self._session = session
        self._outbox = outbox
        self._entries = entries
        self._external = dict(resolved_references)
        self._by_url = {key: e for e in entries for key in e.local_references()}
        #: Local reference -> "Type/<HIN id>" of entries imported or found.
        self._assigned: dict[str, str] = {}
        #: Local references of entries that were rejected.
        self._rejected: set[str] = set()
        self.outcomes: list[fhir_pb2.FhirImportOutcome | None] = [None] * len(entries)

    def run(self) -> list[fhir_pb2.FhirImportOutcome]:
        """Import every entry and return one outcome per entry, in bundle order."""
        for resource_type in fhir_domain.IMPORT_ORDER:
            for entry in self._entries:
                if entry.resource_type == resource_type:
                    self._import_entry(entry)
        for entry in self._entries:
            if self.outcomes[entry.index] is None:
                self.outcomes[entry.index] = fhir_pb2.FhirImportOutcome(
                    resource_type=entry.resource_type,
                    source_id=entry.source_id,
                    status=Status.FHIR_IMPORT_STATUS_IGNORED,
                    reason="records does not import this resource type",
                )
        return [outcome for outcome in self.outcomes if outcome is not None]

    def _import_entry(self, entry: BundleEntry) -> None:
        resource = json.loads(json.dumps(entry.resource))  # private copy to rewrite
        # A savepoint per resource: a resource that fails after a flush
        # leaves no rows behind, and the rest of the bundle still commits.
        savepoint = self._session.begin_nested()
        try:
            status, assigned = self._import_resource(entry, resource)
        except FhirError as exc:
            savepoint.rollback()
            self._reject(entry, str(exc))
            return
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            savepoint.rollback()
            self._reject(
                entry,
                f"{entry.resource_type} has an invalid element value "
                f"({exc.__class__.__name__})",
            )
            return
        savepoint.commit()
        for key in entry.local_references():
            self._assigned[key] = f"{entry.resource_type}/{assigned}"
        self.outcomes[entry.index] = fhir_pb2.FhirImportOutcome(
            resource_type=entry.resource_type,
            source_id=entry.source_id,
            status=status,
            assigned_id=assigned,
        )

    def _import_resource(
        self, entry: BundleEntry, resource: dict[str, Any]
    ) -> tuple[fhir_pb2.FhirImportStatus.ValueType, str]:
        reason = fhir_domain.check_resource(resource)
        if reason:
            raise FhirError(reason)
        fhir_domain.rewrite_references(resource, self._resolve)
        if entry.resource_type in _DIRECTORY_TYPES:
            return self._import_directory(entry, resource)
        if entry.resource_type == "Patient":
            return self._import_patient(resource)
        return self._import_clinical(entry, resource)

    def _reject(self, entry: BundleEntry, reason: str) -> None:
        self._rejected.update(entry.local_references())
        self.outcomes[entry.index] = fhir_pb2.FhirImportOutcome(
            resource_type=entry.resource_type,
            source_id=entry.source_id,
            status=Status.FHIR_IMPORT_STATUS_REJECTED,
            reason=reason,
        )
        logger.info(
            "FHIR resource rejected",
            extra={"resource_type": entry.resource_type, "entry_index": entry.index},
        )

    # References ----------------------------------------------------------

    def _resolve(self, reference: str) -> str | None:
        """Map a reference to "Type/<HIN id>", keep it (None), or raise FhirError."""
        if reference in self._assigned:
            return self._assigned[reference]
        if reference in self._rejected:
            raise FhirError(
                f"reference {reference} points at an entry of this bundle that "
                "was rejected"
            )
        if reference in self._external:
            return f"{self._type_of(reference)}/{self._external[reference]}"
        resource_type, question, query = reference.partition("?")
        if question:
            return self._resolve_conditional(reference, resource_type, query)
        if reference in self._by_url:
            # An entry of a type records does not import (Claim, Location, ...).
            return None
        if reference.startswith("urn:"):
            raise FhirError(
                f"reference {reference} matches no entry of this bundle and is not "
                "in resolved_references"
            )
        return self._resolve_literal(reference)

    def _type_of(self, reference: str) -> str:
        entry = self._by_url.get(reference)
        if entry is not None:
            return entry.resource_type
        head = reference.split("/", 1)[0]
        return head if head and head[0].isupper() else "Patient"

    def _resolve_conditional(
        self, reference: str, resource_type: str, query: str
    ) -> str | None:
        if resource_type not in (*_DIRECTORY_TYPES, "Patient"):
            # NOTE: conditional references to types records does not own
            # (Location, ...) are kept as written and never resolved here.
            return None
        name, _, value = unquote(query).partition("=")
        system, bar, code = value.partition("|")
        if name != "identifier" or not bar or not system or not code:
            # A patient's reference may carry an identifier value, which must
            # not reach an error message.
            shown = "Patient?..." if resource_type == "Patient" else reference
            raise FhirError(
                f"conditional reference {shown} is not supported; records "
                "resolves only <Type>?identifier=<system>|<value>"
            )
        if resource_type == "Patient":
            return self._resolve_patient_identifier(system, code)
        row = store.find_directory_entry(self._session, resource_type, system, code)
        if row is None:
            raise FhirError(
                f"conditional reference {reference} matches no {resource_type} "
                f"known to records; import the bundle that contains that "
                f"{resource_type} first"
            )
        return f"{resource_type}/{row.entry_id}"

    def _resolve_patient_identifier(self, system: str, value: str) -> str:
        holders = store.find_identifier_holders(self._session, [(system, value)])
        holder = holders.get((system, value))
        row = records.resolve_survivor(self._session, holder) if holder else None
        if row is None:
            raise FhirError(
                f"conditional Patient reference with an identifier of system "
                f"{system} matches no patient in records"
            )
        return f"Patient/{row.patient_id}"

    def _resolve_literal(self, reference: str) -> str | None:
        resource_type, _, identifier = reference.partition("/")
        if resource_type == "Patient" and identifier:
            row = records.resolve_survivor(self._session, identifier)
            if row is None:
                raise FhirError(f"reference {reference} names no patient in records")
            return f"Patient/{row.patient_id}"
        return None

    # Resource types --------------------------------------------------------

    def _import_directory(
        self, entry: BundleEntry, resource: dict[str, Any]
    ) -> tuple[fhir_pb2.FhirImportStatus.ValueType, str]:
        key = fhir_domain.first_identifier(resource) or (
            "urn:hin:fhir-id",
            str(resource.get("id") or entry.full_url),
        )
        existing = store.find_directory_entry(
            self._session, entry.resource_type, key[0], key[1]
        )
        if existing is not None:
            return Status.FHIR_IMPORT_STATUS_DUPLICATE, existing.entry_id
        row = store.DirectoryEntryRow(
            entry_id=records.new_id(),
            resource_type=entry.resource_type,
            identifier_system=key[0],
            identifier_value=key[1],
            fhir_json=json.dumps(resource, ensure_ascii=False),
            created_at=records.now(),
        )
        self._session.add(row)
        self._session.flush()
        return Status.FHIR_IMPORT_STATUS_IMPORTED, row.entry_id

    def _import_patient(
        self, resource: dict[str, Any]
    ) -> tuple[fhir_pb2.FhirImportStatus.ValueType, str]:
        organization = fhir_domain.id_from_reference(
            fhir_domain.reference_of(resource, "managingOrganization"), "Organization"
        )
        demographics = fhir_domain.patient_from_fhir(resource, organization)
        violations = Violations()
        rules.validate_demographics(demographics, "Patient", violations)
        if violations:
            raise FhirError(
                "; ".join(f"{v.field} {v.description}" for v in violations.items)
            )
        holders = store.find_identifier_holders(
            self._session, rules.identifier_keys(demographics)
        )
        owners = {
            row.patient_id
            for patient_id in set(holders.values())
            if (row := records.resolve_survivor(self._session, patient_id))
        }
        if len(owners) > 1:
            raise FhirError(
                "Patient's identifiers are held by different patients in records "
                f"({', '.join(sorted(owners))}); merge them first"
            )
        if owners:
            return Status.FHIR_IMPORT_STATUS_DUPLICATE, owners.pop()
        row = records.create_patient(
            self._session, self._outbox, demographics, fhir_source=resource
        )
        return Status.FHIR_IMPORT_STATUS_IMPORTED, row.patient_id

    def _import_clinical(
        self, entry: BundleEntry, resource: dict[str, Any]
    ) -> tuple[fhir_pb2.FhirImportStatus.ValueType, str]:
        kind = fhir_domain.CLINICAL_KINDS[entry.resource_type]
        source_key = f"{entry.resource_type}/{resource.get('id') or entry.full_url}"
        existing = store.find_entry_by_source(self._session, kind, source_key)
        if existing is not None:
            return Status.FHIR_IMPORT_STATUS_DUPLICATE, existing.entry_id
        element = fhir_domain.PATIENT_ELEMENT[entry.resource_type]
        patient_id = fhir_domain.id_from_reference(
            fhir_domain.reference_of(resource, element), "Patient"
        )
        if not patient_id:
            raise FhirError(
                f"{entry.resource_type}.{element} must reference a Patient of this "
                "bundle, of resolved_references, or Patient/<HIN id>"
            )
        survivor = records.resolve_survivor(self._session, patient_id)
        if survivor is None:
            raise FhirError(f"{entry.resource_type}.{element} names an unknown patient")
        if entry.resource_type == "MedicationRequest" and not resource.get(
            "medicationCodeableConcept"
        ):
            raise FhirError(
                "MedicationRequest needs medicationCodeableConcept; a "
                "medicationReference is not supported"
            )
        message = _CONVERTERS[entry.resource_type](resource, survivor.patient_id)
        row = records.add_chart_entry(
            self._session,
            self._outbox,
            kind=kind,
            message=message,
            source_key=source_key,
            fhir_source=resource,
        )
        return Status.FHIR_IMPORT_STATUS_IMPORTED, row.entry_id
