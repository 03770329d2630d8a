"""Import Practitioner, Organization, Location and Encounter resources of FHIR R4.

Encounters become appointments in their final state, so a finished encounter
is a completed appointment. They emit no event. AppointmentCompleted makes
billing charge the visit and records add an encounter, and neither must
happen again for a visit that took place before the network existed.
Records imports the same encounters from the bundle itself.

Importing a resource twice changes nothing: each imported resource is
remembered by type and source id, and a practitioner, organization or
location whose identifier is already held is the same one (DUPLICATE).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from sqlmodel import Session

from hin.common.v1 import fhir_pb2
from svc_appointments import store
from svc_appointments.domain import (
    DEFAULT_TIME_ZONE,
    VISIT_TYPE_BY_ENCOUNTER_CLASS,
    VISIT_TYPE_SYSTEM,
    VISIT_TYPES,
    AppointmentStatus,
)
from svc_appointments.scheduling import new_id
from svc_appointments.store import (
    AppointmentRow,
    FhirSourceRow,
    LocationRow,
    OrganizationRow,
    PractitionerRow,
)

logger = logging.getLogger(__name__)

Status = fhir_pb2.FhirImportStatus
Outcome = fhir_pb2.FhirImportOutcome

#: Resource types this service takes, in the order they are imported so that
#: encounters find the practitioners, organizations and locations of their
#: own bundle.
IMPORT_ORDER = ("Organization", "Location", "Practitioner", "Encounter")

#: FHIR Encounter.status values that are imported, and the appointment state.
ENCOUNTER_STATUS = {
    "finished": AppointmentStatus.COMPLETED,
    "cancelled": AppointmentStatus.CANCELLED,
}

HUMAN_NAME_FIELDS = ("use", "family", "given", "prefix", "suffix", "text")


class ResourceRejected(Exception):
    """One resource cannot be imported; the message is the outcome's reason."""


@dataclass
class _BundleContext:
    """References of one bundle resolved so far, and lookups already made.

    ``sources`` and ``holders`` start with one bulk query each for the whole
    bundle and grow with every resource imported, so most resources need no
    query of their own.
    """

    resolved: dict[str, str]
    source: str
    local: dict[str, str] = field(default_factory=dict)
    #: (resource type, source id) -> assigned id, or None when not imported.
    sources: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: (resource type, system, value) -> id of the resource holding it, or None.
    holders: dict[tuple[str, str, str], str | None] = field(default_factory=dict)

    def imported_id(
        self, session: Session, resource_type: str, source_id: str
    ) -> str | None:
        key = (resource_type, source_id)
        if key not in self.sources:
            row = session.get(FhirSourceRow, key)
            self.sources[key] = row.assigned_id if row is not None else None
        return self.sources[key]

    def holder(
        self, session: Session, resource_type: str, system: str, value: str
    ) -> str | None:
        key = (resource_type, system, value)
        if key not in self.holders:
            self.holders[key] = store.find_by_identifier(
                session, resource_type, system, value
            )
        return self.holders[key]

    def add_identifiers(
        self,
        session: Session,
        resource_type: str,
        resource_id: str,
        identifiers: list[dict[str, str]],
    ) -> None:
        store.add_identifiers(session, resource_type, resource_id, identifiers)
        for identifier in identifiers:
            key = (resource_type, identifier["system"], identifier["value"])
            self.holders[key] = resource_id

    def prefetch(self, session: Session, entries: list[dict[str, Any]]) -> None:
        """Load the import records and identifier holders of the bundle's entries."""
        owned = [
            entry["resource"]
            for entry in entries
            if isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") in IMPORT_ORDER
        ]
        keys = {
            (entry["resource"]["resourceType"], _source_id(entry))
            for entry in entries
            if isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") in IMPORT_ORDER
        }
        self.sources.update(dict.fromkeys(keys))
        self.sources.update(store.imported_sources(session, keys))
        identifier_keys = {
            (str(resource["resourceType"]), str(i["system"]), str(i["value"]))
            for resource in owned
            for i in resource.get("identifier") or []
            if isinstance(i, dict) and i.get("system") and i.get("value")
        }
        self.holders.update(dict.fromkeys(identifier_keys))
        self.holders.update(store.identifier_holders(session, identifier_keys))


class FhirImporter:
    """Turn the resources of one bundle into rows, one outcome per resource."""

    def __init__(self, *, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def import_bundle(
        self,
        session: Session,
        bundle: dict[str, Any],
        resolved_references: dict[str, str],
        source: str,
    ) -> list[Outcome]:
        """Import every resource of ``bundle`` that this service owns.

        Other resource types get an IGNORED outcome. The caller has checked
        that ``bundle`` is a Bundle.
        """
        context = _BundleContext(resolved=dict(resolved_references), source=source)
        entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
        context.prefetch(session, entries)
        outcomes: list[Outcome] = []
        for resource_type in IMPORT_ORDER:
            for entry in entries:
                resource = entry.get("resource")
                if isinstance(resource, dict) and resource.get("resourceType") == (
                    resource_type
                ):
                    outcomes.append(self._import_entry(session, entry, context))
        for entry in entries:
            resource = entry.get("resource")
            resource_type = (
                resource.get("resourceType", "") if isinstance(resource, dict) else ""
            )
            if resource_type not in IMPORT_ORDER:
                outcomes.append(
                    Outcome(
                        resource_type=str(resource_type),
                        source_id=_source_id(entry),
                        status=Status.FHIR_IMPORT_STATUS_IGNORED,
                        reason="resource type is not imported by appointments",
                    )
                )
        return outcomes

    def _import_entry(
        self, session: Session, entry: dict[str, Any], context: _BundleContext
    ) -> Outcome:
        resource = entry["resource"]
        resource_type = resource["resourceType"]
        source_id = _source_id(entry)
        outcome = Outcome(resource_type=resource_type, source_id=source_id)
        try:
            if not source_id:
                raise ResourceRejected("resource has neither an id nor a fullUrl")
            if resource.get("modifierExtension"):
                raise ResourceRejected(
                    "resource has a modifierExtension whose meaning is unknown here"
                )
            known = context.imported_id(session, resource_type, source_id)
            if known is not None:
                assigned, status = known, Status.FHIR_IMPORT_STATUS_DUPLICATE
            else:
                importer = getattr(self, f"_import_{resource_type.lower()}")
                assigned, status = importer(session, entry, context)
                session.add(
                    FhirSourceRow(
                        resource_type=resource_type,
                        source_id=source_id,
                        assigned_id=assigned,
                        imported_at=self._clock(),
                    )
                )
                context.sources[(resource_type, source_id)] = assigned
        except ResourceRejected as exc:
            outcome.status = Status.FHIR_IMPORT_STATUS_REJECTED
            outcome.reason = str(exc)
            return outcome

        for reference in _references_of(entry, resource_type):
            context.local[reference] = assigned
        outcome.status = status
        outcome.assigned_id = assigned
        return outcome

    # --- one method per resource type: return (assigned id, status) ---------

    def _import_practitioner(
        self, session: Session, entry: dict[str, Any], context: _BundleContext
    ) -> tuple[str, int]:
        resource = entry["resource"]
        identifiers = _identifiers(resource)
        existing = _holder(session, "Practitioner", identifiers, context)
        if existing is not None:
            return existing, Status.FHIR_IMPORT_STATUS_DUPLICATE
        practitioner_id = _preassigned(entry, "Practitioner", context) or new_id()
        session.add(
            PractitionerRow(
                id=practitioner_id,
                identifiers=identifiers,
                names=[_human_name(n) for n in resource.get("name") or []],
                organization_id="",
                specialty={},
                active=resource.get("active", True) is not False,
                created_at=self._clock(),
            )
        )
        context.add_identifiers(session, "Practitioner", practitioner_id, identifiers)
        return practitioner_id, Status.FHIR_IMPORT_STATUS_IMPORTED

    def _import_organization(
        self, session: Session, entry: dict[str, Any], context: _BundleContext
    ) -> tuple[str, int]:
        resource = entry["resource"]
        identifiers = _identifiers(resource)
        existing = _holder(session, "Organization", identifiers, context)
        if existing is not None:
            return existing, Status.FHIR_IMPORT_STATUS_DUPLICATE
        organization_id = _preassigned(entry, "Organization", context) or new_id()
        # NOTE: FHIR Organization has no time zone; imported organizations get
        # the network default, which is wrong for Synthea's US organizations.
        session.add(
            OrganizationRow(
                id=organization_id,
                name=str(resource.get("name", "")),
                time_zone=DEFAULT_TIME_ZONE,
                identifiers=identifiers,
                created_at=self._clock(),
            )
        )
        context.add_identifiers(session, "Organization", organization_id, identifiers)
        return organization_id, Status.FHIR_IMPORT_STATUS_IMPORTED

    def _import_location(
        self, session: Session, entry: dict[str, Any], context: _BundleContext
    ) -> tuple[str, int]:
        resource = entry["resource"]
        identifiers = _identifiers(resource)
        existing = _holder(session, "Location", identifiers, context)
        if existing is not None:
            return existing, Status.FHIR_IMPORT_STATUS_DUPLICATE
        organization_id = ""
        managing = _reference(resource.get("managingOrganization"), "Organization")
        if managing:
            organization_id = _resolve_required(
                session, managing, "Organization", context, "managingOrganization"
            )
        location_id = _preassigned(entry, "Location", context) or new_id()
        session.add(
            LocationRow(
                id=location_id,
                name=str(resource.get("name", "")),
                organization_id=organization_id,
                identifiers=identifiers,
                created_at=self._clock(),
            )
        )
        context.add_identifiers(session, "Location", location_id, identifiers)
        return location_id, Status.FHIR_IMPORT_STATUS_IMPORTED

    def _import_encounter(
        self, session: Session, entry: dict[str, Any], context: _BundleContext
    ) -> tuple[str, int]:
        resource = entry["resource"]
        status = ENCOUNTER_STATUS.get(str(resource.get("status", "")))
        if status is None:
            raise ResourceRejected(
                f"Encounter.status {resource.get('status')!r} is not imported; "
                f"only {', '.join(ENCOUNTER_STATUS)} encounters are history"
            )
        patient_id = _resolve_patient(resource, context)
        period = resource.get("period") or {}
        start = _parse_date_time(period.get("start"), "period.start")
        end = _parse_date_time(period.get("end") or period.get("start"), "period.end")
        if end < start:
            raise ResourceRejected("period.end is earlier than period.start")

        practitioner_id = ""
        individual = _performer_reference(resource)
        if individual:
            practitioner_id = _resolve_required(
                session, individual, "Practitioner", context, "participant.individual"
            )
        organization_id = ""
        provider = _reference(resource.get("serviceProvider"), "Organization")
        if provider:
            organization_id = _resolve_required(
                session, provider, "Organization", context, "serviceProvider"
            )
        location_id = ""
        locations = resource.get("location") or []
        if locations:
            location_ref = _reference(locations[0].get("location"), "Location")
            if location_ref:
                location_id = _resolve_required(
                    session, location_ref, "Location", context, "location[0].location"
                )

        encounter_class = str((resource.get("class") or {}).get("code", ""))
        visit_type = VISIT_TYPE_BY_ENCOUNTER_CLASS.get(encounter_class, "visit-general")
        appointment = AppointmentRow(
            id=new_id(),
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            organization_id=organization_id,
            location_id=location_id,
            start_at=start,
            end_at=end,
            service_type_system=VISIT_TYPE_SYSTEM,
            service_type_code=visit_type,
            service_type_display=VISIT_TYPES[visit_type],
            reason=_type_text(resource),
            status=str(status),
            completed_at=end if status is AppointmentStatus.COMPLETED else None,
            encounter_id=_preassigned(entry, "Encounter", context),
            imported=True,
            created_at=self._clock(),
            updated_at=self._clock(),
        )
        session.add(appointment)
        return appointment.id, Status.FHIR_IMPORT_STATUS_IMPORTED


# --- references ------------------------------------------------------------


def _source_id(entry: dict[str, Any]) -> str:
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("id"):
        return str(resource["id"])
    full_url = str(entry.get("fullUrl") or "")
    return full_url.removeprefix("urn:uuid:")


def _references_of(entry: dict[str, Any], resource_type: str) -> Iterable[str]:
    """Yield the ways other resources of a bundle may refer to ``entry``."""
    if entry.get("fullUrl"):
        yield str(entry["fullUrl"])
    resource_id = entry["resource"].get("id")
    if resource_id:
        yield f"{resource_type}/{resource_id}"
        yield f"urn:uuid:{resource_id}"


def _reference(value: Any, resource_type: str) -> str:
    """Return a Reference's literal reference as text.

    A logical reference (``{"identifier": {...}}`` with no ``reference``, as
    in Synthea's Location.managingOrganization) becomes the equivalent
    conditional reference ``<type>?identifier=<system>|<value>``.
    """
    if not isinstance(value, dict):
        return ""
    if value.get("reference"):
        return str(value["reference"])
    identifier = value.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        system = identifier.get("system", "")
        return f"{resource_type}?identifier={system}|{identifier['value']}"
    return ""


def _preassigned(
    entry: dict[str, Any], resource_type: str, context: _BundleContext
) -> str:
    """Return the HIN id another service already gave this resource, if any."""
    for reference in _references_of(entry, resource_type):
        if reference in context.resolved:
            return context.resolved[reference]
    return ""


def _resolve_patient(resource: dict[str, Any], context: _BundleContext) -> str:
    reference = _reference(resource.get("subject"), "Patient")
    if not reference:
        raise ResourceRejected("Encounter.subject is missing")
    candidates = [reference]
    if reference.startswith("urn:uuid:"):
        candidates.append("Patient/" + reference.removeprefix("urn:uuid:"))
    elif reference.startswith("Patient/"):
        candidates.append("urn:uuid:" + reference.removeprefix("Patient/"))
    for candidate in candidates:
        if candidate in context.resolved:
            return context.resolved[candidate]
    raise ResourceRejected(
        f"subject {reference} has no patient id in resolved_references; import "
        "the patient through records first and pass the id it assigned"
    )


def _resolve_required(
    session: Session,
    reference: str,
    resource_type: str,
    context: _BundleContext,
    field_name: str,
) -> str:
    resolved = _resolve(session, reference, resource_type, context)
    if resolved is None:
        raise ResourceRejected(
            f"{field_name} {reference} does not match an imported {resource_type}; "
            f"import the bundle that holds the {resource_type} first"
        )
    return resolved


def _resolve(
    session: Session, reference: str, resource_type: str, context: _BundleContext
) -> str | None:
    """Resolve a literal, urn:uuid: or conditional reference to a HIN id."""
    if reference in context.local:
        return context.local[reference]
    if reference in context.resolved:
        return context.resolved[reference]
    conditional = f"{resource_type}?identifier="
    if reference.startswith(conditional):
        system, separator, value = unquote(reference[len(conditional) :]).partition("|")
        if not separator:
            raise ResourceRejected(
                f"conditional reference {reference} is not of the form "
                f"{resource_type}?identifier=<system>|<value>"
            )
        return context.holder(session, resource_type, system, value)
    if reference.startswith("urn:uuid:"):
        source_id = reference.removeprefix("urn:uuid:")
    elif reference.startswith(f"{resource_type}/"):
        source_id = reference.removeprefix(f"{resource_type}/")
    else:
        return None
    return context.imported_id(session, resource_type, source_id)


def _performer_reference(resource: dict[str, Any]) -> str:
    """Return the primary performer's reference, else the first participant's."""
    participants = [p for p in resource.get("participant") or [] if isinstance(p, dict)]
    for participant in participants:
        codes = {
            coding.get("code")
            for concept in participant.get("type") or []
            for coding in concept.get("coding") or []
        }
        if "PPRF" in codes and _reference(
            participant.get("individual"), "Practitioner"
        ):
            return _reference(participant.get("individual"), "Practitioner")
    for participant in participants:
        reference = _reference(participant.get("individual"), "Practitioner")
        if reference:
            return reference
    return ""


# --- values ----------------------------------------------------------------


def _identifiers(resource: dict[str, Any]) -> list[dict[str, str]]:
    identifiers = []
    for index, identifier in enumerate(resource.get("identifier") or []):
        system, value = identifier.get("system"), identifier.get("value")
        if not system or not value:
            raise ResourceRejected(f"identifier[{index}] needs both system and value")
        identifiers.append(
            {"system": str(system), "value": str(value), "type_code": ""}
        )
    return identifiers


def _holder(
    session: Session,
    resource_type: str,
    identifiers: list[dict[str, str]],
    context: _BundleContext,
) -> str | None:
    for identifier in identifiers:
        holder = context.holder(
            session, resource_type, identifier["system"], identifier["value"]
        )
        if holder is not None:
            return holder
    return None


def _human_name(name: dict[str, Any]) -> dict[str, Any]:
    return {key: name[key] for key in HUMAN_NAME_FIELDS if name.get(key)}


def _type_text(resource: dict[str, Any]) -> str:
    types = resource.get("type") or []
    if not types:
        return ""
    concept = types[0]
    if concept.get("text"):
        return str(concept["text"])
    codings = concept.get("coding") or [{}]
    return str(codings[0].get("display", ""))


def _parse_date_time(value: Any, field_name: str) -> datetime:
    """Parse a FHIR dateTime that has a time; it must carry its time zone."""
    if not isinstance(value, str) or "T" not in value:
        raise ResourceRejected(f"{field_name} {value!r} is not a dateTime with a time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ResourceRejected(
            f"{field_name} {value!r} is not a valid dateTime"
        ) from None
    if moment.tzinfo is None:
        raise ResourceRejected(
            f"{field_name} {value!r} has a time but no time zone, which FHIR forbids"
        )
    return moment
