"""Build a FHIR R4 Bundle of one patient's record."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from svc_records.domain.fhir import (
    GENDER_CODES,
    addresses_from_fhir,
    identifiers_from_fhir,
    telecom_from_fhir,
)
from svc_records.domain.patients import date_to_iso

#: Elements of a stored Patient that the structured demographics replace.
_DEMOGRAPHIC_ELEMENTS = (
    "identifier",
    "name",
    "telecom",
    "address",
    "birthDate",
    "gender",
    "deceasedBoolean",
    "deceasedDateTime",
    "managingOrganization",
)

_PATIENT_ELEMENT = {
    "Encounter": "subject",
    "Condition": "subject",
    "AllergyIntolerance": "patient",
    "MedicationRequest": "subject",
    "Observation": "subject",
}


@dataclass(frozen=True)
class ChartEntry:
    """Stored chart entry as the exporter needs it."""

    entry_id: str
    message: Message
    fhir: dict[str, Any] | None


def export_bundle(
    *,
    patient_id: str,
    demographics: pb.PatientDemographics,
    patient_fhir: dict[str, Any] | None,
    entries: list[ChartEntry],
    directory: list[tuple[str, str, dict[str, Any]]],
) -> dict[str, Any]:
    """Return a collection Bundle: the patient, its chart and referenced parties.

    ``directory`` lists (entry id, resource type, FHIR JSON) of the
    practitioners and organizations the chart references.
    """
    resources = [patient_resource(patient_id, demographics, patient_fhir)]
    for entry in entries:
        resources.append(chart_resource(patient_id, entry))
    for entry_id, resource_type, resource in directory:
        exported = copy.deepcopy(resource)
        exported["resourceType"] = resource_type
        exported["id"] = entry_id
        resources.append(exported)
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(datetime.datetime.now(datetime.UTC)),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
            }
            for r in resources
        ],
    }


def patient_resource(
    patient_id: str,
    demographics: pb.PatientDemographics,
    source: dict[str, Any] | None,
) -> dict[str, Any]:
    """Return the FHIR Patient: the imported source with current demographics.

    Elements that records does not model (extensions, marital status,
    communication, ...) come from the imported source unchanged. A list
    whose structured form still equals the source's keeps the source's items,
    so their extensions and type codings survive too.
    """
    resource = copy.deepcopy(source) if source else {}
    original = {key: resource.pop(key, None) for key in _DEMOGRAPHIC_ELEMENTS}
    resource.pop("text", None)
    resource["resourceType"] = "Patient"
    resource["id"] = patient_id
    resource["identifier"] = _prefer_source(
        original["identifier"],
        list(demographics.identifiers),
        identifiers_from_fhir,
        _identifier_json,
    )
    names = [_name_json(name) for name in demographics.names]
    if names:
        resource["name"] = names
    telecom = _prefer_source(
        original["telecom"],
        list(demographics.telecom),
        telecom_from_fhir,
        _contact_json,
    )
    if telecom:
        resource["telecom"] = telecom
    addresses = _prefer_source(
        original["address"],
        list(demographics.addresses),
        addresses_from_fhir,
        _address_json,
    )
    if addresses:
        resource["address"] = addresses
    if date_to_iso(demographics.birth_date):
        resource["birthDate"] = date_to_iso(demographics.birth_date)
    if demographics.gender in GENDER_CODES:
        resource["gender"] = GENDER_CODES[demographics.gender]
    if demographics.HasField("deceased_at"):
        resource["deceasedDateTime"] = _instant(_datetime(demographics.deceased_at))
    elif demographics.deceased:
        resource["deceasedBoolean"] = True
    if demographics.managing_organization_id:
        resource["managingOrganization"] = {
            "reference": f"Organization/{demographics.managing_organization_id}"
        }
    return resource


def _prefer_source(
    source: Any, current: list[Any], convert: Any, to_json: Any
) -> list[Any]:
    if isinstance(source, list) and convert(source) == current:
        return source
    return [to_json(item) for item in current]


def _identifier_json(identifier: types_pb2.Identifier) -> dict[str, Any]:
    result: dict[str, Any] = {"system": identifier.system, "value": identifier.value}
    if identifier.type_code:
        result["type"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": identifier.type_code,
                }
            ]
        }
    return result


def _name_json(name: types_pb2.HumanName) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if name.use:
        result["use"] = name.use
    if name.text:
        result["text"] = name.text
    if name.family:
        result["family"] = name.family
    for element in ("given", "prefix", "suffix"):
        values = list(getattr(name, element))
        if values:
            result[element] = values
    return result


def _contact_json(contact: types_pb2.ContactPoint) -> dict[str, Any]:
    result = {"system": contact.system or "phone", "value": contact.value}
    if contact.use:
        result["use"] = contact.use
    return result


def _address_json(address: types_pb2.Address) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if address.lines:
        result["line"] = list(address.lines)
    for element, value in (
        ("city", address.city),
        ("state", address.district),
        ("postalCode", address.postal_code),
        ("country", address.country),
    ):
        if value:
            result[element] = value
    return result


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime.datetime:
    return stamp.ToDatetime(tzinfo=datetime.UTC)


def _instant(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _when(stamp: timestamp_pb2.Timestamp) -> str | None:
    if not (stamp.seconds or stamp.nanos):
        return None
    return _instant(_datetime(stamp))


def _concept_json(concept: types_pb2.CodeableConcept) -> dict[str, Any]:
    result: dict[str, Any] = {}
    codings = [
        {
            k: v
            for k, v in (("system", c.system), ("code", c.code), ("display", c.display))
            if v
        }
        for c in concept.codings
    ]
    if codings:
        result["coding"] = codings
    if concept.text:
        result["text"] = concept.text
    return result


def _status_concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def chart_resource(patient_id: str, entry: ChartEntry) -> dict[str, Any]:
    """Return the FHIR resource of one chart entry, pointing at ``patient_id``.

    An imported entry is exported from its source JSON; one recorded through
    an RPC or an event is built from its message.
    """
    if entry.fhir is not None:
        resource = copy.deepcopy(entry.fhir)
    else:
        resource = _build_resource(entry.message)
    resource["id"] = entry.entry_id
    resource.pop("text", None)
    element = _PATIENT_ELEMENT[resource["resourceType"]]
    # A merge moves entries to the survivor, so the patient reference is
    # always written from the current owner.
    resource[element] = {"reference": f"Patient/{patient_id}"}
    return resource


def _build_resource(message: Message) -> dict[str, Any]:
    builders: dict[str, Callable[[Any], dict[str, Any]]] = {
        "Encounter": _encounter_json,
        "Condition": _condition_json,
        "Allergy": _allergy_json,
        "Medication": _medication_json,
        "Observation": _observation_json,
    }
    resource = builders[message.DESCRIPTOR.name](message)
    return {k: v for k, v in resource.items() if v not in (None, {}, [], "")}


def _encounter_json(m: pb.Encounter) -> dict[str, Any]:
    period = {
        k: v
        for k, v in (("start", _when(m.period.start)), ("end", _when(m.period.end)))
        if v
    }
    return {
        "resourceType": "Encounter",
        "status": m.status or "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": m.encounter_class or "AMB",
        },
        "type": [_concept_json(m.type)] if _concept_json(m.type) else [],
        "period": period,
        "participant": (
            [{"individual": {"reference": f"Practitioner/{m.practitioner_id}"}}]
            if m.practitioner_id
            else []
        ),
        "serviceProvider": (
            {"reference": f"Organization/{m.organization_id}"}
            if m.organization_id
            else None
        ),
        "reasonCode": [_concept_json(m.reason)] if _concept_json(m.reason) else [],
    }


def _condition_json(m: pb.Condition) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": _status_concept(
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            m.clinical_status,
        )
        if m.clinical_status
        else None,
        "verificationStatus": _status_concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            m.verification_status,
        )
        if m.verification_status
        else None,
        "code": _concept_json(m.code),
        "encounter": {"reference": f"Encounter/{m.encounter_id}"}
        if m.encounter_id
        else None,
        "onsetDateTime": _when(m.onset_at),
        "abatementDateTime": _when(m.abated_at),
        "recordedDate": _when(m.recorded_at),
    }


def _allergy_json(m: pb.Allergy) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": _status_concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            m.clinical_status,
        )
        if m.clinical_status
        else None,
        "criticality": m.criticality or None,
        "category": list(m.categories),
        "code": _concept_json(m.code),
        "recordedDate": _when(m.recorded_at),
    }


def _medication_json(m: pb.Medication) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": m.status or "active",
        "intent": m.intent or "order",
        "medicationCodeableConcept": _concept_json(m.code),
        "encounter": {"reference": f"Encounter/{m.encounter_id}"}
        if m.encounter_id
        else None,
        "authoredOn": _when(m.authored_at),
        "requester": {"reference": f"Practitioner/{m.requester_practitioner_id}"}
        if m.requester_practitioner_id
        else None,
        "dosageInstruction": [{"text": m.dosage_text}] if m.dosage_text else [],
    }


def _observation_json(m: pb.Observation) -> dict[str, Any]:
    coding = {
        k: v
        for k, v in (
            ("system", m.code.system),
            ("code", m.code.code),
            ("display", m.code.display),
        )
        if v
    }
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": _observation_status(m.status),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/"
                        "observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [coding]} if coding else {"text": "laboratory result"},
        "effectiveDateTime": _when(m.effective_at),
        "identifier": [{"system": "urn:hin:id:lab-result", "value": m.result_id}],
    }
    try:
        number: float | None = float(m.value)
    except ValueError:
        number = None
    if number is not None:
        quantity: dict[str, Any] = {"value": number}
        if m.unit:
            quantity.update(
                unit=m.unit, system="http://unitsofmeasure.org", code=m.unit
            )
        resource["valueQuantity"] = quantity
    elif m.value:
        resource["valueString"] = m.value
    if m.reference_range:
        resource["referenceRange"] = [{"text": m.reference_range}]
    return resource


def _observation_status(status: str) -> str:
    allowed = {"preliminary", "final", "amended", "corrected", "cancelled"}
    return status if status in allowed else "final"
