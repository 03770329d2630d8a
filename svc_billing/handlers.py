"""Event handlers: charges from clinical events and the patient snapshot.

Each handler runs in the consumer's transaction together with the inbox row.
Charges carry the causing event's id under a unique constraint, so a
redelivered event posts nothing even when the inbox is bypassed.

A code without a price raises UnpricedService. The consumer retries, then
sends the record to the dead-letter topic; once the price is added,
``hin dlq replay`` posts the charge. Billing keeps no separate worklist of
unpriced charges: the dead-letter topic is that worklist.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, update

from hin.appointments.v1 import events_pb2 as appointments
from hin.labs.v1 import events_pb2 as labs
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import Envelope, Handler
from svc_billing import domain, store
from svc_billing.ledger import ChargeInput, OutboxWriter, post_charge

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Message)

#: Result statuses that post no charge.
NOT_CHARGED_STATUSES = (labs.RESULT_STATUS_CORRECTED, labs.RESULT_STATUS_CANCELLED)

#: Tables whose rows name a patient; a merge moves them to the survivor.
PATIENT_TABLES: tuple[type[store.BillingBase], ...] = (
    store.ChargeRow,
    store.InvoiceRow,
    store.PolicyRow,
    store.ClaimRow,
    store.PaymentRow,
)


class BadEvent(ValueError):
    """An event lacks a field billing needs; the record goes to the DLQ."""


def build_handlers(outbox: OutboxWriter) -> list[Handler]:
    """Bind every event billing consumes to its handler."""

    def on_appointment_completed(
        session: Session, event: appointments.AppointmentCompleted, envelope: Any
    ) -> None:
        appointment = event.appointment
        if not appointment.patient_id or not appointment.service_type.code:
            raise BadEvent(
                f"AppointmentCompleted {envelope.id} lacks patient_id or "
                "service_type.code"
            )
        service_type = appointment.service_type
        completed = (
            event.completed_at.ToDatetime(tzinfo=dt.UTC)
            if event.HasField("completed_at")
            else dt.datetime.now(dt.UTC)
        )
        row = post_charge(
            session,
            outbox,
            ChargeInput(
                patient_id=appointment.patient_id,
                encounter_id=event.encounter_id,
                system=service_type.system or domain.VISIT_TYPE_SYSTEM,
                code=service_type.code,
                display=service_type.display,
                quantity=1,
                service_date=completed,
                source_event_id=envelope.id,
                source_ref=(
                    f"appointments.appointment:{appointment.appointment_id}"
                    if appointment.appointment_id
                    else ""
                ),
            ),
        )
        logger.info(
            "visit charge posted",
            extra={"charge_id": row.charge_id, "event_id": envelope.id},
        )

    def on_result_published(
        session: Session, event: labs.TestResultPublished, envelope: Any
    ) -> None:
        result = event.result
        if event.historical:
            return
        # A corrected result was charged when first published, and a
        # cancelled test was not performed.
        if result.status in NOT_CHARGED_STATUSES:
            return
        if not result.patient_id or not result.test.code:
            raise BadEvent(
                f"TestResultPublished {envelope.id} lacks patient_id or test.code"
            )
        moment = (
            result.effective_at.ToDatetime(tzinfo=dt.UTC)
            if result.HasField("effective_at")
            else dt.datetime.now(dt.UTC)
        )
        row = post_charge(
            session,
            outbox,
            ChargeInput(
                patient_id=result.patient_id,
                encounter_id="",
                system=result.test.system or domain.LOINC_SYSTEM,
                code=result.test.code,
                display=result.test.display,
                quantity=1,
                service_date=moment,
                source_event_id=envelope.id,
                source_ref=(
                    f"labs.result:{result.result_id}" if result.result_id else ""
                ),
            ),
        )
        logger.info(
            "test charge posted",
            extra={"charge_id": row.charge_id, "event_id": envelope.id},
        )

    def on_result_corrected(
        session: Session, event: labs.TestResultCorrected, envelope: Any
    ) -> None:
        # A correction changes the value, not the test performed. The charge
        # of the original TestResultPublished remains and nothing is posted.
        return

    return [
        bind(appointments.AppointmentCompleted, on_appointment_completed),
        bind(labs.TestResultPublished, on_result_published),
        bind(labs.TestResultCorrected, on_result_corrected),
        bind(records.PatientRegistered, on_patient_snapshot),
        bind(records.PatientRecordUpdated, on_patient_snapshot),
        bind(records.PatientsMerged, on_patients_merged),
    ]


def bind(
    event_type: type[E], fn: Callable[[Session, E, Any], None]
) -> Handler[E]:
    """Wrap ``fn`` so it receives the consumer's session as a SQLModel session.

    The consumer opens its sessions with ``Database.transaction``, which
    creates SQLModel sessions; the wrapper raises TypeError if that changes.
    """

    def call(session: OrmSession, event: E, envelope: Envelope) -> None:
        if not isinstance(session, Session):
            raise TypeError(
                f"handler needs a sqlmodel Session, found {type(session).__name__}"
            )
        fn(session, event, envelope)

    return Handler(event_type, call)


def on_patient_snapshot(
    session: Session,
    event: records.PatientRegistered | records.PatientRecordUpdated,
    envelope: Any,
) -> None:
    """Keep the patient's id, organization and deceased flag; no demographics."""
    save_snapshot(session, event.patient)


def on_patients_merged(
    session: Session, event: records.PatientsMerged, envelope: Any
) -> None:
    """Link the merged patient to the survivor and move its billing rows."""
    if not event.surviving_patient_id or not event.merged_patient_id:
        raise BadEvent(f"PatientsMerged {envelope.id} lacks a patient id")
    if event.HasField("survivor"):
        save_snapshot(session, event.survivor)
    merged = session.get(store.PatientRow, event.merged_patient_id)
    if merged is None:
        merged = store.PatientRow(patient_id=event.merged_patient_id)
    merged.merged_into = event.surviving_patient_id
    session.add(merged)
    for table in PATIENT_TABLES:
        session.exec(  # type: ignore[call-overload]
            update(table)
            .where(col(table.patient_id) == event.merged_patient_id)  # type: ignore[attr-defined]
            .values(patient_id=event.surviving_patient_id)
        )


def save_snapshot(session: Session, patient: records.PatientSnapshot) -> None:
    """Insert or update a snapshot; an older version never overwrites a newer."""
    if not patient.patient_id:
        raise BadEvent("patient snapshot lacks patient_id")
    row = session.get(store.PatientRow, patient.patient_id)
    if row is None:
        row = store.PatientRow(patient_id=patient.patient_id)
    elif row.version > patient.version:
        return
    row.organization_id = patient.managing_organization_id
    row.deceased = patient.deceased
    row.version = patient.version
    session.add(row)
