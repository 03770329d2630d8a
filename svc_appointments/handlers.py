"""Consumers of records' patient events: the local patient snapshot.

Scheduling keeps only what booking needs (existence, deceased flag, managing
organization, merge link), never names or birth dates. Each handler runs in
the consumer's transaction together with the inbox row. A handler is also
safe to run twice: a snapshot older than the stored one changes nothing.
A snapshot that marks the patient deceased cancels the patient's future
bookings and emits AppointmentCancelled for each, in that same transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlmodel import Session as SqlModelSession

from hin.records.v1 import events_pb2 as records_events
from mesh.runtime.events import Envelope, Handler
from svc_appointments.scheduling import Scheduler
from svc_appointments.store import AdmissionRow, AppointmentRow, PatientSnapshotRow

logger = logging.getLogger(__name__)


class PatientEventInvalid(ValueError):
    """A records event lacks the ids scheduling needs; the bus dead-letters it."""


def apply_patient_snapshot(
    session: Session, snapshot: records_events.PatientSnapshot, *, event_type: str
) -> None:
    """Insert or refresh one patient's snapshot unless the stored one is newer."""
    if not snapshot.patient_id:
        raise PatientEventInvalid(f"{event_type} carries no patient.patient_id")
    row = session.get(PatientSnapshotRow, snapshot.patient_id)
    if row is None:
        row = PatientSnapshotRow(patient_id=snapshot.patient_id, version=-1)
    if snapshot.version < row.version:
        logger.info(
            "older patient snapshot ignored",
            extra={"patient_id": snapshot.patient_id, "event_type": event_type},
        )
        return
    row.version = snapshot.version
    row.deceased = snapshot.deceased
    row.managing_organization_id = snapshot.managing_organization_id
    row.updated_at = datetime.now(UTC)
    session.add(row)


def on_patient_registered(
    session: Session, event: records_events.PatientRegistered, envelope: Envelope
) -> None:
    apply_patient_snapshot(session, event.patient, event_type="PatientRegistered")


def on_patient_record_updated(
    session: Session, event: records_events.PatientRecordUpdated, envelope: Envelope
) -> None:
    apply_patient_snapshot(session, event.patient, event_type="PatientRecordUpdated")


def on_patients_merged(
    session: Session, event: records_events.PatientsMerged, envelope: Envelope
) -> None:
    """Link the merged patient to the survivor and move its appointments."""
    merged_id, survivor_id = event.merged_patient_id, event.surviving_patient_id
    if not merged_id or not survivor_id or merged_id == survivor_id:
        raise PatientEventInvalid(
            "PatientsMerged needs two different ids in merged_patient_id and "
            "surviving_patient_id"
        )
    if event.HasField("survivor") and event.survivor.patient_id == survivor_id:
        apply_patient_snapshot(session, event.survivor, event_type="PatientsMerged")
    elif session.get(PatientSnapshotRow, survivor_id) is None:
        session.add(
            PatientSnapshotRow(
                patient_id=survivor_id, version=0, updated_at=datetime.now(UTC)
            )
        )

    merged = session.get(PatientSnapshotRow, merged_id)
    if merged is None:
        merged = PatientSnapshotRow(patient_id=merged_id, version=0)
    merged.merged_into = survivor_id
    merged.updated_at = datetime.now(UTC)
    session.add(merged)

    # Every reference to the merged id now resolves to the survivor.
    session.execute(
        update(AppointmentRow)
        .where(AppointmentRow.patient_id == merged_id)  # type: ignore[arg-type]
        .values(patient_id=survivor_id)
    )
    session.execute(
        update(AdmissionRow)
        .where(AdmissionRow.patient_id == merged_id)  # type: ignore[arg-type]
        .values(patient_id=survivor_id)
    )
    logger.info(
        "patients merged",
        extra={"merged_patient_id": merged_id, "surviving_patient_id": survivor_id},
    )


def patient_handlers(scheduler: Scheduler) -> list[Handler]:
    """Return the consumer's handlers for records' patient events.

    A snapshot that marks the patient deceased also cancels the patient's
    future bookings through ``scheduler``, in the same transaction.
    """

    def registered(
        session: Session, event: records_events.PatientRegistered, envelope: Envelope
    ) -> None:
        on_patient_registered(session, event, envelope)
        _cancel_if_deceased(session, event.patient, envelope)

    def updated(
        session: Session,
        event: records_events.PatientRecordUpdated,
        envelope: Envelope,
    ) -> None:
        on_patient_record_updated(session, event, envelope)
        _cancel_if_deceased(session, event.patient, envelope)

    def _cancel_if_deceased(
        session: Session,
        snapshot: records_events.PatientSnapshot,
        envelope: Envelope,
    ) -> None:
        if snapshot.deceased:
            # The consumer's session comes from Database.transaction, which
            # opens a SQLModel session; the store's queries need its exec().
            scheduler.cancel_for_deceased(
                cast(SqlModelSession, session),
                snapshot.patient_id,
                causation_id=envelope.id,
            )

    return [
        Handler(records_events.PatientRegistered, registered),
        Handler(records_events.PatientRecordUpdated, updated),
        Handler(records_events.PatientsMerged, on_patients_merged),
    ]
