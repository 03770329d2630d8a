"""Read FHIR R4 resources into records messages, without storage.

The importer (``svc_records.importing``) decides the order and stores the
results; this module checks single resources and converts them.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from svc_records.domain.patients import iso_to_date

#: Resource types records imports, in the order they are imported so that a
#: resource's references point at resources imported before it.
IMPORT_ORDER = (
    "Organization",
    "Practitioner",
    "Patient",
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
)

#: Chart kind stored for each clinical resource type.
CLINICAL_KINDS = {
    "Encounter": "encounter",
    "Condition": "condition",
    "AllergyIntolerance": "allergy",
    "MedicationRequest": "medication",
}

#: Reference element naming the patient, per clinical resource type.
PATIENT_ELEMENT = {
    "Encounter": "subject",
    "Condition": "subject",
    "AllergyIntolerance": "patient",
    "MedicationRequest": "subject",
}

# FHIR dateTime and instant with a time but no zone: "2020-01-01T10:00" or
# "2020-01-01T10:00:00.5". FHIR requires the zone whenever hours are given.
_ZONELESS_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")

_GENDERS = {
    "male": types_pb2.GENDER_MALE,
    "female": types_pb2.GENDER_FEMALE,
    "other": types_pb2.GENDER_OTHER,
    "unknown": types_pb2.GENDER_UNKNOWN,
}
GENDER_CODES = {value: key for key, value in _GENDERS.items()}


class FhirError(ValueError):
    """A bundle or resource is not acceptable. str() explains why, without PHI."""


@dataclass(frozen=True)
class BundleEntry:
    """One entry of a bundle."""

    index: int
    full_url: str
    resource: dict[str, Any]

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType", ""))

    @property
    def source_id(self) -> str:
        """Return the id an outcome reports: the fullUrl, else Type/id."""
        if self.full_url:
            return self.full_url
        return f"{self.resource_type}/{self.resource.get('id', '')}"

    def local_references(self) -> list[str]:
        """Return the references by which other entries may point at this one."""
        keys = [self.full_url] if self.full_url else []
        if self.resource.get("id"):
            keys.append(f"{self.resource_type}/{self.resource['id']}")
        return keys


def read_bundle(data: bytes) -> list[BundleEntry]:
    """Parse a Bundle's JSON into its entries; raise FhirError when it is not one."""
    try:
        bundle = json.loads(data)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and integers
    # longer than Python's int conversion limit; RecursionError deep nesting.
    except (ValueError, RecursionError) as exc:
        raise FhirError(f"bundle is not valid JSON: {exc.__class__.__name__}") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError('bundle must be a JSON object with "resourceType": "Bundle"')
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError("Bundle.entry must be a list")
    result = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            entry = {}
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            resource = {}
        full_url = entry.get("fullUrl")
        result.append(
            BundleEntry(
                index=index,
                full_url=full_url if isinstance(full_url, str) else "",
                resource=resource,
            )
        )
    return result


def check_resource(resource: dict[str, Any]) -> str:
    """Return why ``resource`` must be rejected, or "" when it is acceptable.

    A modifierExtension changes the meaning of its element, so a resource with
    one that records does not understand (it understands none) is rejected.
    A dateTime with hours but no time zone is invalid FHIR.
    """
    for path, key, value in _walk(resource, ""):
        if key == "modifierExtension":
            urls = ", ".join(
                str(item.get("url", "?")) for item in value if isinstance(item, dict)
            )
            return (
                f"unsupported modifierExtension at {path} ({urls}); records "
                "cannot know what it changes, so the resource is rejected"
            )
        if isinstance(value, str) and _ZONELESS_DATETIME.match(value):
            return (
                f"{path} has a time but no time zone; FHIR dateTime needs a zone "
                "such as Z or +02:00 whenever hours are given"
            )
    return ""


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else key
            yield child, key, value
            yield from _walk(value, child)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


def rewrite_references(
    resource: dict[str, Any], resolve: Callable[[str], str | None]
) -> None:
    """Replace every Reference.reference that ``resolve`` maps, in place.

    ``resolve`` returns the new reference ("Patient/<id>"), None to keep the
    original, or raises FhirError to reject the resource.
    """
    for node in _dicts(resource):
        reference = node.get("reference")
        if isinstance(reference, str):
            new = resolve(reference)
            if new is not None:
                node["reference"] = new


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dicts(item)


def reference_of(resource: dict[str, Any], element: str) -> str:
    """Return ``resource[element].reference``, or ""."""
    value = resource.get(element)
    if isinstance(value, dict):
        return str(value.get("reference", ""))
    return ""


def id_from_reference(reference: str, resource_type: str) -> str:
    """Return the id of a rewritten ``Type/id`` reference, or ""."""
    prefix = resource_type + "/"
    return reference[len(prefix) :] if reference.startswith(prefix) else ""


def first_identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    """Return (system, value) of the first complete identifier, or None."""
    for identifier in resource.get("identifier", []) or []:
        if isinstance(identifier, dict):
            system, value = identifier.get("system"), identifier.get("value")
            if system and value:
                return str(system), str(value)
    return None


def parse_timestamp(text: str | None) -> timestamp_pb2.Timestamp | None:
    """Parse a FHIR date, dateTime or instant into a UTC Timestamp.

    A date without a time is taken as midnight UTC; a partial date ("2020",
    "2020-05") as its first day.
    """
    if not text:
        return None
    if "T" in text:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    else:
        parts = [int(p) for p in text.split("-")] + [1, 1]
        moment = datetime.datetime(parts[0], parts[1], parts[2], tzinfo=datetime.UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(datetime.UTC))
    return stamp


def _codeable(value: Any) -> types_pb2.CodeableConcept:
    concept = types_pb2.CodeableConcept()
    if not isinstance(value, dict):
        return concept
    for coding in value.get("coding", []) or []:
        concept.codings.add(
            system=str(coding.get("system", "")),
            code=str(coding.get("code", "")),
            display=str(coding.get("display", "")),
        )
    concept.text = str(value.get("text", ""))
    return concept


def _status_code(value: Any) -> str:
    """Return the first code of a CodeableConcept status such as clinicalStatus."""
    if isinstance(value, dict):
        for coding in value.get("coding", []) or []:
            if coding.get("code"):
                return str(coding["code"])
    return ""


# Patient ----------------------------------------------------------------


def identifiers_from_fhir(items: list[Any]) -> list[types_pb2.Identifier]:
    """Convert FHIR identifiers; incomplete ones are skipped."""
    result = []
    for item in items or []:
        if not (isinstance(item, dict) and item.get("system") and item.get("value")):
            continue
        codings = (item.get("type") or {}).get("coding") or [{}]
        result.append(
            types_pb2.Identifier(
                system=str(item["system"]),
                value=str(item["value"]),
                type_code=str(codings[0].get("code", "")),
            )
        )
    return result


def names_from_fhir(items: list[Any]) -> list[types_pb2.HumanName]:
    """Convert FHIR HumanNames."""
    return [
        types_pb2.HumanName(
            use=str(item.get("use", "")),
            family=str(item.get("family", "")),
            given=[str(g) for g in item.get("given", []) or []],
            prefix=[str(p) for p in item.get("prefix", []) or []],
            suffix=[str(s) for s in item.get("suffix", []) or []],
            text=str(item.get("text", "")),
        )
        for item in items or []
        if isinstance(item, dict)
    ]


def telecom_from_fhir(items: list[Any]) -> list[types_pb2.ContactPoint]:
    """Convert FHIR ContactPoints that have a value."""
    return [
        types_pb2.ContactPoint(
            system=str(item.get("system", "")),
            value=str(item["value"]),
            use=str(item.get("use", "")),
        )
        for item in items or []
        if isinstance(item, dict) and item.get("value")
    ]


def addresses_from_fhir(items: list[Any]) -> list[types_pb2.Address]:
    """Convert FHIR Addresses; the state becomes the district."""
    return [
        types_pb2.Address(
            lines=[str(line) for line in item.get("line", []) or []],
            city=str(item.get("city", "")),
            district=str(item.get("state", "")),
            postal_code=str(item.get("postalCode", "")),
            country=str(item.get("country", "")),
        )
        for item in items or []
        if isinstance(item, dict)
    ]


def patient_from_fhir(
    resource: dict[str, Any], organization_id: str
) -> pb.PatientDemographics:
    """Convert a FHIR Patient into demographics; raise FhirError when unusable."""
    patient = pb.PatientDemographics(
        identifiers=identifiers_from_fhir(resource.get("identifier", [])),
        names=names_from_fhir(resource.get("name", [])),
        telecom=telecom_from_fhir(resource.get("telecom", [])),
        addresses=addresses_from_fhir(resource.get("address", [])),
        managing_organization_id=organization_id,
    )
    if not patient.identifiers:
        raise FhirError(
            "Patient has no identifier with system and value; records needs one "
            "to recognize the patient when the bundle is imported again"
        )
    birth_date = resource.get("birthDate")
    if birth_date:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(birth_date)):
            raise FhirError("Patient.birthDate must be a full date YYYY-MM-DD")
        patient.birth_date.CopyFrom(iso_to_date(str(birth_date)))
    gender = resource.get("gender")
    if gender:
        if gender not in _GENDERS:
            raise FhirError("Patient.gender must be male, female, other or unknown")
        patient.gender = _GENDERS[gender]
    if resource.get("deceasedDateTime"):
        patient.deceased = True
        stamp = parse_timestamp(str(resource["deceasedDateTime"]))
        if stamp is not None:
            patient.deceased_at.CopyFrom(stamp)
    elif resource.get("deceasedBoolean") is True:
        patient.deceased = True
    return patient


# Clinical resources -----------------------------------------------------


def encounter_from_fhir(resource: dict[str, Any], patient_id: str) -> pb.Encounter:
    """Convert a FHIR Encounter whose references were already rewritten."""
    encounter = pb.Encounter(
        patient_id=patient_id,
        status=str(resource.get("status", "")),
        encounter_class=str((resource.get("class") or {}).get("code", "")),
        organization_id=id_from_reference(
            reference_of(resource, "serviceProvider"), "Organization"
        ),
    )
    types = resource.get("type") or []
    if types:
        encounter.type.CopyFrom(_codeable(types[0]))
    reasons = resource.get("reasonCode") or []
    if reasons:
        encounter.reason.CopyFrom(_codeable(reasons[0]))
    for participant in resource.get("participant", []) or []:
        practitioner = id_from_reference(
            reference_of(participant, "individual"), "Practitioner"
        )
        if practitioner:
            encounter.practitioner_id = practitioner
            break
    _set_period(encounter.period, resource.get("period"))
    return encounter


def _set_period(period: types_pb2.Period, value: Any) -> None:
    if not isinstance(value, dict):
        return
    start, end = parse_timestamp(value.get("start")), parse_timestamp(value.get("end"))
    if start is not None:
        period.start.CopyFrom(start)
    if end is not None:
        period.end.CopyFrom(end)


def condition_from_fhir(resource: dict[str, Any], patient_id: str) -> pb.Condition:
    """Convert a FHIR Condition whose references were already rewritten."""
    condition = pb.Condition(
        patient_id=patient_id,
        code=_codeable(resource.get("code")),
        clinical_status=_status_code(resource.get("clinicalStatus")),
        verification_status=_status_code(resource.get("verificationStatus")),
        encounter_id=id_from_reference(
            reference_of(resource, "encounter"), "Encounter"
        ),
    )
    for element, target in (
        ("onsetDateTime", condition.onset_at),
        ("abatementDateTime", condition.abated_at),
        ("recordedDate", condition.recorded_at),
    ):
        stamp = parse_timestamp(resource.get(element))
        if stamp is not None:
            target.CopyFrom(stamp)
    return condition


def allergy_from_fhir(resource: dict[str, Any], patient_id: str) -> pb.Allergy:
    """Convert a FHIR AllergyIntolerance."""
    allergy = pb.Allergy(
        patient_id=patient_id,
        code=_codeable(resource.get("code")),
        clinical_status=_status_code(resource.get("clinicalStatus")),
        criticality=str(resource.get("criticality", "")),
        categories=[str(c) for c in resource.get("category", []) or []],
    )
    stamp = parse_timestamp(resource.get("recordedDate"))
    if stamp is not None:
        allergy.recorded_at.CopyFrom(stamp)
    return allergy


def medication_from_fhir(resource: dict[str, Any], patient_id: str) -> pb.Medication:
    """Convert a FHIR MedicationRequest with a medicationCodeableConcept."""
    medication = pb.Medication(
        patient_id=patient_id,
        code=_codeable(resource.get("medicationCodeableConcept")),
        status=str(resource.get("status", "")),
        intent=str(resource.get("intent", "")),
        requester_practitioner_id=id_from_reference(
            reference_of(resource, "requester"), "Practitioner"
        ),
        encounter_id=id_from_reference(
            reference_of(resource, "encounter"), "Encounter"
        ),
    )
    dosage = resource.get("dosageInstruction") or []
    if dosage and isinstance(dosage[0], dict):
        medication.dosage_text = str(dosage[0].get("text", ""))
    stamp = parse_timestamp(resource.get("authoredOn"))
    if stamp is not None:
        medication.authored_at.CopyFrom(stamp)
    return medication


def occurred_at(message: Any) -> datetime.datetime | None:
    """Return the clinically relevant time of a chart message, for ordering."""
    candidates = {
        "Encounter": lambda m: m.period.start if m.HasField("period") else None,
        "Condition": lambda m: m.onset_at if m.HasField("onset_at") else None,
        "Allergy": lambda m: m.recorded_at if m.HasField("recorded_at") else None,
        "Medication": lambda m: m.authored_at if m.HasField("authored_at") else None,
        "Observation": lambda m: m.effective_at if m.HasField("effective_at") else None,
    }
    getter = candidates.get(message.DESCRIPTOR.name)
    stamp = getter(message) if getter else None
    if stamp is None or not (stamp.seconds or stamp.nanos):
        return None
    return stamp.ToDatetime(tzinfo=datetime.UTC)
