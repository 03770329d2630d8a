"""Import laboratory Observations and DiagnosticReports from FHIR R4 bundles.

Imported results are history, not news: they are stored and published with
``TestResultPublished.historical`` set, so records files them while notify
and billing ignore them. An imported DiagnosticReport becomes a RESULTED
order without a LabOrderPlaced event for the same reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from hin.common.v1 import fhir_pb2
from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from mesh.runtime.errors import FieldViolation
from svc_labs import domain, publishing, store
from svc_labs.errors import InvalidBundle

Status = fhir_pb2.FhirImportStatus

LAB_OBSERVATION_CATEGORY = "laboratory"
LAB_REPORT_CATEGORY = "LAB"

#: FHIR Observation.status mapped to the network's result status.
OBSERVATION_STATUS = {
    "final": events.ResultStatus.RESULT_STATUS_FINAL,
    "amended": events.ResultStatus.RESULT_STATUS_CORRECTED,
    "corrected": events.ResultStatus.RESULT_STATUS_CORRECTED,
    "preliminary": events.ResultStatus.RESULT_STATUS_PRELIMINARY,
    "registered": events.ResultStatus.RESULT_STATUS_PRELIMINARY,
    "cancelled": events.ResultStatus.RESULT_STATUS_CANCELLED,
}


@dataclass
class PlannedResource:
    """One bundle entry and what the import will do with it."""

    resource_type: str
    source_id: str
    resource: dict[str, Any]
    #: Reference forms other resources may use for this one.
    aliases: list[str] = field(default_factory=list)
    patient_id: str = ""
    #: Set when the entry is ignored or rejected before touching the database.
    outcome: fhir_pb2.FhirImportOutcome | None = None


@dataclass
class ImportPlan:
    """Entries of a bundle in order, and the patients they write to."""

    entries: list[PlannedResource]
    patient_ids: set[str]


def plan_import(bundle: bytes, resolved: dict[str, str]) -> ImportPlan:
    """Parse a bundle and decide per entry, without touching the database.

    Raises:
        InvalidBundle: the bytes are not a JSON FHIR Bundle.
    """
    document = _parse_bundle(bundle)
    entries: list[PlannedResource] = []
    patients: set[str] = set()
    for index, entry in enumerate(document.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = str(resource.get("resourceType", ""))
        source_id = str(entry.get("fullUrl") or resource.get("id") or f"entry[{index}]")
        planned = PlannedResource(kind, source_id, resource, _aliases(entry, resource))
        entries.append(planned)
        if kind not in ("Observation", "DiagnosticReport"):
            planned.outcome = _outcome(
                planned,
                Status.FHIR_IMPORT_STATUS_IGNORED,
                f"{kind} is imported by another service",
            )
            continue
        if not _is_laboratory(planned):
            planned.outcome = _outcome(
                planned,
                Status.FHIR_IMPORT_STATUS_IGNORED,
                "not a laboratory observation or report",
            )
            continue
        reference = str((resource.get("subject") or {}).get("reference", ""))
        planned.patient_id = resolved.get(reference, "")
        if not planned.patient_id:
            planned.outcome = _outcome(
                planned,
                Status.FHIR_IMPORT_STATUS_REJECTED,
                f"subject {reference or '(missing)'} is not in resolved_references; "
                "import the patient through records first",
            )
            continue
        patients.add(planned.patient_id)
    return ImportPlan(entries=entries, patient_ids=patients)


def apply_import(
    session: Session, outbox: Any, plan: ImportPlan, limits: domain.CriticalLimits
) -> list[fhir_pb2.FhirImportOutcome]:
    """Store the planned reports and observations; return one outcome per entry."""
    order_ids: dict[str, str] = {}
    outcomes: dict[int, fhir_pb2.FhirImportOutcome] = {}
    for position, planned in enumerate(plan.entries):
        if planned.outcome is None and planned.resource_type == "DiagnosticReport":
            outcomes[position] = _import_report(session, planned, order_ids)
    for position, planned in enumerate(plan.entries):
        if planned.outcome is not None:
            outcomes[position] = planned.outcome
        elif planned.resource_type == "Observation":
            outcomes[position] = _import_observation(
                session, outbox, planned, order_ids, limits
            )
    return [outcomes[position] for position in range(len(plan.entries))]


def _import_report(
    session: Session, planned: PlannedResource, order_ids: dict[str, str]
) -> fhir_pb2.FhirImportOutcome:
    resource = planned.resource
    source_key = f"fhir:{planned.source_id}"
    existing = store.find_order_by_source(session, source_key)
    if existing is not None:
        order = existing
        status = Status.FHIR_IMPORT_STATUS_DUPLICATE
    else:
        test = _loinc_coding(resource.get("code"))
        if test is None:
            return _outcome(
                planned, Status.FHIR_IMPORT_STATUS_REJECTED, "code has no LOINC coding"
            )
        order = pb.LabOrder(
            order_id=publishing.new_id(),
            patient_id=planned.patient_id,
            tests=[test],
            priority=events.Priority.PRIORITY_ROUTINE,
            status=pb.OrderStatus.ORDER_STATUS_RESULTED,
            version=1,
        )
        placed = _instant(resource.get("effectiveDateTime"))
        if placed is not None:
            order.placed_at.FromDatetime(placed)
        store.insert_order(session, order, source_key=source_key)
        status = Status.FHIR_IMPORT_STATUS_IMPORTED
    for reference in resource.get("result") or []:
        if isinstance(reference, dict) and reference.get("reference"):
            order_ids[str(reference["reference"])] = order.order_id
    return _outcome(planned, status, assigned_id=order.order_id)


def _import_observation(
    session: Session,
    outbox: Any,
    planned: PlannedResource,
    order_ids: dict[str, str],
    limits: domain.CriticalLimits,
) -> fhir_pb2.FhirImportOutcome:
    source_key = f"fhir:{planned.source_id}"
    existing = store.find_result_by_source(session, source_key)
    if existing is not None:
        return _outcome(
            planned, Status.FHIR_IMPORT_STATUS_DUPLICATE, assigned_id=existing.result_id
        )
    resource = planned.resource
    test = _loinc_coding(resource.get("code"))
    if test is None:
        return _outcome(
            planned, Status.FHIR_IMPORT_STATUS_REJECTED, "code has no LOINC coding"
        )
    value = _value(resource)
    if value is None:
        return _outcome(
            planned,
            Status.FHIR_IMPORT_STATUS_REJECTED,
            "no valueQuantity, valueCodeableConcept or valueString",
        )
    result = events.TestResult(
        result_id=publishing.new_id(),
        order_id=next((order_ids[a] for a in planned.aliases if a in order_ids), ""),
        patient_id=planned.patient_id,
        test=test,
        value=value,
        status=OBSERVATION_STATUS.get(
            str(resource.get("status", "")), events.ResultStatus.RESULT_STATUS_FINAL
        ),
        version=1,
    )
    _fill_interpretation(resource, result)
    _fill_reference_range(resource, result)
    effective = _instant(resource.get("effectiveDateTime"))
    if effective is not None:
        result.effective_at.FromDatetime(effective)
    issued = _instant(resource.get("issued"))
    if issued is not None:
        result.issued_at.FromDatetime(issued)
    domain.apply_critical_rules(result, limits)
    store.insert_result(session, result, source_key=source_key, historical=True)
    publishing.publish_result(session, outbox, result, historical=True)
    return _outcome(
        planned, Status.FHIR_IMPORT_STATUS_IMPORTED, assigned_id=result.result_id
    )


def _parse_bundle(bundle: bytes) -> dict[str, Any]:
    try:
        document = json.loads(bundle, parse_float=Decimal)
    # RecursionError: nesting deeper than the interpreter's recursion limit.
    except (ValueError, RecursionError) as exc:
        raise InvalidBundle(
            f"bundle is not valid JSON ({exc.__class__.__name__}); send a FHIR R4 "
            "Bundle as UTF-8 JSON",
            reason="INVALID_BUNDLE",
            violations=[FieldViolation("bundle", "is not valid JSON")],
        ) from None
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise InvalidBundle(
            "bundle is not a FHIR Bundle; resourceType must be Bundle",
            reason="INVALID_BUNDLE",
            violations=[FieldViolation("bundle", "resourceType must be Bundle")],
        )
    return document


def _aliases(entry: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    aliases = []
    if entry.get("fullUrl"):
        aliases.append(str(entry["fullUrl"]))
    if resource.get("id"):
        aliases.append(f"{resource.get('resourceType')}/{resource['id']}")
    return aliases


def _is_laboratory(planned: PlannedResource) -> bool:
    wanted = (
        LAB_OBSERVATION_CATEGORY
        if planned.resource_type == "Observation"
        else LAB_REPORT_CATEGORY
    )
    for category in planned.resource.get("category") or []:
        for coding in (category or {}).get("coding") or []:
            if str((coding or {}).get("code", "")) == wanted:
                return True
    return False


def _loinc_coding(concept: Any) -> types.Coding | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == domain.LOINC_SYSTEM:
            if coding.get("code"):
                return types.Coding(
                    system=domain.LOINC_SYSTEM,
                    code=str(coding["code"]),
                    display=str(coding.get("display", "")),
                )
    return None


def _value(resource: dict[str, Any]) -> events.ResultValue | None:
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        number = quantity["value"]
        text = format(number, "f") if isinstance(number, Decimal) else str(number)
        if not domain.is_decimal(text):
            return None
        return events.ResultValue(
            quantity=text,
            unit=str(quantity.get("code") or quantity.get("unit") or ""),
            comparator=str(quantity.get("comparator", "")),
        )
    concept = resource.get("valueCodeableConcept")
    if isinstance(concept, dict):
        value = events.ResultValue()
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict):
                value.coded.codings.add(
                    system=str(coding.get("system", "")),
                    code=str(coding.get("code", "")),
                    display=str(coding.get("display", "")),
                )
        value.coded.text = str(concept.get("text", ""))
        return value
    if isinstance(resource.get("valueString"), str):
        return events.ResultValue(text=resource["valueString"])
    return None


def _fill_interpretation(resource: dict[str, Any], result: events.TestResult) -> None:
    for concept in resource.get("interpretation") or []:
        for coding in (concept or {}).get("coding") or []:
            code = str((coding or {}).get("code", "")).upper()
            if code in domain.INTERPRETATION_CODES:
                result.interpretation = domain.INTERPRETATION_CODES[code]  # type: ignore[assignment]
                result.critical = code in domain.CRITICAL_INTERPRETATION_CODES
                return


def _fill_reference_range(resource: dict[str, Any], result: events.TestResult) -> None:
    ranges = resource.get("referenceRange") or []
    if not ranges or not isinstance(ranges[0], dict):
        return
    first = ranges[0]
    for name in ("low", "high"):
        bound = first.get(name)
        if isinstance(bound, dict) and bound.get("value") is not None:
            number = bound["value"]
            text = format(number, "f") if isinstance(number, Decimal) else str(number)
            setattr(result.reference_range, name, text)
    result.reference_range.text = str(first.get("text", ""))


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    # NOTE: a FHIR date or dateTime without a zone is read as UTC; Synthea
    # always writes an offset, other sources may not.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _outcome(
    planned: PlannedResource,
    status: int,
    reason: str = "",
    *,
    assigned_id: str = "",
) -> fhir_pb2.FhirImportOutcome:
    return fhir_pb2.FhirImportOutcome(
        resource_type=planned.resource_type,
        source_id=planned.source_id,
        status=status,  # type: ignore[arg-type]
        assigned_id=assigned_id,
        reason=reason,
    )
