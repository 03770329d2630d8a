"""Event handlers: lab results and completed appointments enter the chart."""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session

from hin.appointments.v1 import events_pb2 as appointment_events
from hin.labs.v1 import events_pb2 as lab_events
from hin.records.v1 import records_service_pb2 as pb
from mesh.runtime.events import Envelope, Handler
from svc_records import records, store

logger = logging.getLogger(__name__)


class UnknownPatient(LookupError):
    """An event names a patient records does not hold; it is retried, then
    dead-lettered."""


def build_handlers(outbox: Any) -> list[Handler[Any]]:
    """Return the records consumer's handlers."""

    # The consumer types its session as SQLAlchemy's; Database.transaction
    # creates SQLModel sessions, which the store functions need.
    def on_result_published(
        session: OrmSession, event: lab_events.TestResultPublished, envelope: Envelope
    ) -> None:
        file_observation(cast(Session, session), event.result)

    def on_result_corrected(
        session: OrmSession, event: lab_events.TestResultCorrected, envelope: Envelope
    ) -> None:
        file_observation(cast(Session, session), event.result)

    def on_appointment_completed(
        session: OrmSession,
        event: appointment_events.AppointmentCompleted,
        envelope: Envelope,
    ) -> None:
        record_visit(cast(Session, session), outbox, event)

    return [
        Handler(lab_events.TestResultPublished, on_result_published),
        Handler(lab_events.TestResultCorrected, on_result_corrected),
        Handler(appointment_events.AppointmentCompleted, on_appointment_completed),
    ]


def _survivor_id(session: Session, patient_id: str) -> str:
    row = records.resolve_survivor(session, patient_id)
    if row is None:
        raise UnknownPatient(f"patient {patient_id} is not in records")
    return row.patient_id


def file_observation(session: Session, result: lab_events.TestResult) -> None:
    """Insert or correct the observation copied from one lab result.

    A result version older than or equal to the stored one changes nothing,
    so redelivered and reordered events are harmless.
    """
    if not result.result_id:
        raise ValueError("lab result has no result_id")
    observation = pb.Observation(
        patient_id=_survivor_id(session, result.patient_id),
        result_id=result.result_id,
        code=result.test,
        unit=result.value.unit,
        interpretation=_enum_suffix(
            lab_events.Interpretation.Name(result.interpretation), "INTERPRETATION_"
        ),
        status=_enum_suffix(
            lab_events.ResultStatus.Name(result.status), "RESULT_STATUS_"
        ).lower(),
        version=result.version,
        critical=result.critical,
        reference_range=_range_text(result.reference_range),
    )
    kind = result.value.WhichOneof("value")
    if kind == "quantity":
        observation.value = result.value.comparator + result.value.quantity
    elif kind == "text":
        observation.value = result.value.text
    elif kind == "coded":
        observation.value = result.value.coded.text or ", ".join(
            c.display or c.code for c in result.value.coded.codings
        )
    if result.HasField("effective_at"):
        observation.effective_at.CopyFrom(result.effective_at)

    existing = store.find_entry_by_source(session, "observation", result.result_id)
    if existing is None:
        records.add_chart_entry(
            session,
            None,
            kind="observation",
            message=observation,
            source_key=result.result_id,
        )
        return
    if existing.version >= result.version:
        return
    observation.observation_id = existing.entry_id
    existing.payload = observation.SerializeToString(deterministic=True)
    existing.version = result.version
    existing.patient_id = observation.patient_id
    session.add(existing)


def _enum_suffix(name: str, prefix: str) -> str:
    suffix = name.removeprefix(prefix)
    return "" if suffix == "UNSPECIFIED" else suffix


def _range_text(reference_range: lab_events.ReferenceRange) -> str:
    if reference_range.text:
        return reference_range.text
    if reference_range.low or reference_range.high:
        return f"{reference_range.low}-{reference_range.high}"
    return ""


def record_visit(
    session: Session, outbox: Any, event: appointment_events.AppointmentCompleted
) -> None:
    """Add the encounter of a completed appointment, once per encounter id."""
    appointment = event.appointment
    encounter_id = event.encounter_id or appointment.appointment_id
    if not encounter_id:
        raise ValueError(
            "AppointmentCompleted has neither encounter_id nor appointment_id"
        )
    source_key = f"appointment/{encounter_id}"
    if store.find_entry_by_source(session, "encounter", source_key) is not None:
        return
    encounter = pb.Encounter(
        patient_id=_survivor_id(session, appointment.patient_id),
        status="finished",
        encounter_class="AMB",
        practitioner_id=appointment.practitioner_id,
        organization_id=appointment.organization_id,
        appointment_id=appointment.appointment_id,
    )
    if appointment.HasField("period"):
        encounter.period.CopyFrom(appointment.period)
    if event.HasField("completed_at"):
        encounter.period.end.CopyFrom(event.completed_at)
    if appointment.HasField("service_type"):
        encounter.type.codings.add().CopyFrom(appointment.service_type)
    records.add_chart_entry(
        session,
        outbox,
        kind="encounter",
        message=encounter,
        source_key=source_key,
        entry_id=encounter_id,
    )
