"""State changes of the records context, each with its events.

Every function runs inside the caller's transaction and adds its events to
the outbox in that same transaction, so a change and its event are committed
together or not at all.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import uuid_utils
from google.protobuf.message import Message
from sqlmodel import Session

from hin.common.v1 import types_pb2
from hin.records.v1 import events_pb2
from hin.records.v1 import records_service_pb2 as pb
from mesh.runtime.principal import current_principal
from svc_records import store
from svc_records.domain import fhir as fhir_domain
from svc_records.domain import patients as rules
from svc_records.errors import IdentifierTaken

logger = logging.getLogger(__name__)

#: Chart kind -> message class stored in ClinicalEntryRow.payload.
ENTRY_MESSAGES: dict[str, type[Message]] = {
    "encounter": pb.Encounter,
    "condition": pb.Condition,
    "allergy": pb.Allergy,
    "medication": pb.Medication,
    "observation": pb.Observation,
}

#: Chart kind -> the message field that contains the entry id.
ENTRY_ID_FIELDS = {
    "encounter": "encounter_id",
    "condition": "condition_id",
    "allergy": "allergy_id",
    "medication": "medication_id",
    "observation": "observation_id",
}


def new_id() -> str:
    """Return a new opaque id (UUIDv7, so ids sort by creation time)."""
    return str(uuid_utils.uuid7())


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def demographics_of(row: store.PatientRow) -> pb.PatientDemographics:
    """Return the stored demographics of a patient row."""
    return pb.PatientDemographics.FromString(row.demographics)


def patient_message(row: store.PatientRow, merged_ids: list[str]) -> pb.Patient:
    """Build the Patient message (demographics only) of a row."""
    demographics = demographics_of(row)
    patient = pb.Patient(
        patient_id=row.patient_id,
        version=row.version,
        identifiers=demographics.identifiers,
        names=demographics.names,
        birth_date=demographics.birth_date,
        gender=demographics.gender,
        deceased=demographics.deceased,
        telecom=demographics.telecom,
        addresses=demographics.addresses,
        managing_organization_id=demographics.managing_organization_id,
        merged_patient_ids=merged_ids,
    )
    if demographics.HasField("deceased_at"):
        patient.deceased_at.CopyFrom(demographics.deceased_at)
    patient.created_at.FromDatetime(_as_utc(row.created_at))
    patient.updated_at.FromDatetime(_as_utc(row.updated_at))
    return patient


def _as_utc(moment: datetime.datetime) -> datetime.datetime:
    # SQLite returns naive datetimes for timezone-aware columns.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment


def snapshot(row: store.PatientRow) -> events_pb2.PatientSnapshot:
    """Build the PatientSnapshot that records events carry."""
    demographics = demographics_of(row)
    return events_pb2.PatientSnapshot(
        patient_id=row.patient_id,
        identifiers=demographics.identifiers,
        names=demographics.names,
        birth_date=demographics.birth_date,
        gender=demographics.gender,
        deceased=demographics.deceased,
        telecom=demographics.telecom,
        managing_organization_id=demographics.managing_organization_id,
        version=row.version,
    )


def apply_demographics(
    row: store.PatientRow, demographics: pb.PatientDemographics
) -> None:
    """Copy demographics and their search keys onto a row."""
    row.demographics = demographics.SerializeToString(deterministic=True)
    row.birth_date = rules.date_to_iso(demographics.birth_date)
    row.gender = types_pb2.Gender.Name(demographics.gender)
    row.deceased = demographics.deceased
    row.managing_organization_id = demographics.managing_organization_id
    row.search_names = rules.search_names(demographics)
    row.search_phones = rules.search_phones(demographics)


def check_identifiers_free(
    session: Session,
    demographics: pb.PatientDemographics,
    patient_id: str,
    prefix: str,
) -> None:
    """Raise IdentifierTaken when another patient has one of the identifiers.

    The error names the request field, never the identifier's value.
    """
    holders = store.find_identifier_holders(
        session, rules.identifier_keys(demographics)
    )
    for index, key in enumerate(rules.identifier_keys(demographics)):
        holder = holders.get(key)
        if holder is not None and holder != patient_id:
            raise IdentifierTaken(
                f"{prefix}.identifiers[{index}] is already held by patient "
                f"{holder}; search by identifier to find that record, or merge "
                "the two records with MergePatients",
                reason="IDENTIFIER_TAKEN",
                metadata={
                    "field": f"{prefix}.identifiers[{index}]",
                    "holder_patient_id": holder,
                },
            )


def create_patient(
    session: Session,
    outbox: Any,
    demographics: pb.PatientDemographics,
    *,
    fhir_source: dict[str, Any] | None = None,
) -> store.PatientRow:
    """Insert a patient with its identifiers and emit PatientRegistered."""
    moment = now()
    row = store.PatientRow(
        patient_id=new_id(),
        version=1,
        demographics=b"",
        fhir_json=json.dumps(fhir_source, ensure_ascii=False) if fhir_source else "",
        created_at=moment,
        updated_at=moment,
    )
    apply_demographics(row, demographics)
    session.add(row)
    session.flush()
    store.replace_identifiers(
        session, row.patient_id, rules.identifier_keys(demographics)
    )
    outbox.add(
        session,
        events_pb2.PatientRegistered(
            context=event_context(row.managing_organization_id),
            patient=snapshot(row),
        ),
        key=row.patient_id,
        subject=row.patient_id,
    )
    logger.info("patient registered", extra={"patient_id": row.patient_id})
    return row


def event_context(organization_id: str = "") -> types_pb2.EventContext:
    """Return an event context naming the organization the event happened in.

    That is the caller's organization, else ``organization_id`` (the
    patient's managing organization or the appointment's). The outbox fills
    the event id, time, actor and trace id.
    """
    caller = current_principal().organization_id
    return types_pb2.EventContext(organization_id=caller or organization_id)


def resolve_survivor(session: Session, patient_id: str) -> store.PatientRow | None:
    """Follow merge links from ``patient_id`` to the active record, if any."""
    row = store.get_patient(session, patient_id)
    hops = 0
    while row is not None and row.status == "merged" and row.merged_into:
        row = store.get_patient(session, row.merged_into)
        hops += 1
        if hops > 32:  # A cycle would be a bug; stop rather than loop forever.
            return None
    return row


def add_chart_entry(
    session: Session,
    outbox: Any,
    *,
    kind: str,
    message: Message,
    source_key: str | None,
    fhir_source: dict[str, Any] | None = None,
    entry_id: str = "",
) -> store.ClinicalEntryRow:
    """Insert one chart entry; emit EncounterRecorded for an encounter.

    ``message`` gets the new entry id in its id field.
    """
    entry_id = entry_id or new_id()
    setattr(message, ENTRY_ID_FIELDS[kind], entry_id)
    patient_id = str(message.patient_id)  # type: ignore[attr-defined]
    row = store.ClinicalEntryRow(
        entry_id=entry_id,
        patient_id=patient_id,
        kind=kind,
        source_key=source_key,
        payload=message.SerializeToString(deterministic=True),
        fhir_json=json.dumps(fhir_source, ensure_ascii=False) if fhir_source else "",
        occurred_at=fhir_domain.occurred_at(message),
        created_at=now(),
    )
    session.add(row)
    session.flush()
    if kind == "encounter":
        assert isinstance(message, pb.Encounter)
        outbox.add(
            session,
            encounter_recorded(message),
            key=patient_id,
            subject=patient_id,
        )
    return row


def encounter_recorded(encounter: pb.Encounter) -> events_pb2.EncounterRecorded:
    """Build the EncounterRecorded event of an encounter."""
    event = events_pb2.EncounterRecorded(
        context=event_context(encounter.organization_id),
        patient_id=encounter.patient_id,
        encounter_id=encounter.encounter_id,
        encounter_class=encounter.encounter_class,
        type=encounter.type,
        period=encounter.period,
        practitioner_id=encounter.practitioner_id,
        organization_id=encounter.organization_id,
        appointment_id=encounter.appointment_id,
    )
    event.recorded_at.FromDatetime(now())
    return event


def entry_message(row: store.ClinicalEntryRow) -> Message:
    """Decode the message of a chart entry row."""
    return ENTRY_MESSAGES[row.kind].FromString(row.payload)
