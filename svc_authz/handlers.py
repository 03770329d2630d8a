"""Event handlers: patient snapshots and care relationships from other contexts.

Each handler runs in the consumer's transaction with its inbox row, and
writes rows keyed by the event's own ids, so a redelivered event rewrites the
same rows. A handler raises on an event it cannot apply; the bus retries it
and then dead-letters it.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session
from sqlmodel import Session as ModelSession

from hin.appointments.v1 import events_pb2 as appointments
from hin.labs.v1 import events_pb2 as labs
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import Envelope, Handler
from svc_authz import store

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]


def _time(stamp: Timestamp, fallback: datetime.datetime) -> datetime.datetime:
    if stamp.seconds or stamp.nanos:
        return stamp.ToDatetime(datetime.UTC)
    return fallback


def _model(session: Session) -> ModelSession:
    # The consumer's transactions come from Database.transaction(), which
    # opens sqlmodel sessions; the store's queries use their exec().
    return cast(ModelSession, session)


def _require(value: str, name: str, event: object) -> str:
    if not value:
        raise ValueError(
            f"{type(event).__name__} has an empty {name}; the event cannot open "
            "or close an access relationship"
        )
    return value


class AuthzHandlers:
    """Apply the events that change who may see which patient.

    Args:
        clock: current time in UTC, for events without a time of their own.
    """

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock

    def handlers(self) -> list[Handler]:  # type: ignore[type-arg]
        """Return the handler list for the service's consumer."""
        return [
            Handler(records.PatientRegistered, self.on_patient_registered),
            Handler(records.PatientRecordUpdated, self.on_patient_updated),
            Handler(records.PatientsMerged, self.on_patients_merged),
            Handler(appointments.AppointmentBooked, self.on_appointment_booked),
            Handler(appointments.AppointmentRescheduled, self.on_rescheduled),
            Handler(appointments.AppointmentCancelled, self.on_appointment_ended),
            Handler(appointments.AppointmentNoShow, self.on_appointment_ended),
            Handler(appointments.AppointmentCompleted, self.on_appointment_completed),
            Handler(appointments.PatientAdmitted, self.on_patient_admitted),
            Handler(appointments.PatientDischarged, self.on_patient_discharged),
            Handler(labs.LabOrderPlaced, self.on_lab_order_placed),
        ]

    def _now(self, event: object) -> datetime.datetime:
        context = getattr(event, "context", None)
        return _time(context.occurred_at, self._clock()) if context else self._clock()

    # Patients ----------------------------------------------------------------

    def on_patient_registered(
        self, session: Session, event: records.PatientRegistered, envelope: Envelope
    ) -> None:
        self._store_snapshot(session, event.patient, event)

    def on_patient_updated(
        self, session: Session, event: records.PatientRecordUpdated, envelope: Envelope
    ) -> None:
        self._store_snapshot(session, event.patient, event)

    def _store_snapshot(
        self, session: Session, patient: records.PatientSnapshot, event: object
    ) -> None:
        store.upsert_patient(
            _model(session),
            patient_id=_require(patient.patient_id, "patient.patient_id", event),
            managing_organization_id=patient.managing_organization_id,
            version=patient.version,
            now=self._now(event),
        )

    def on_patients_merged(
        self, session: Session, event: records.PatientsMerged, envelope: Envelope
    ) -> None:
        survivor = _require(event.surviving_patient_id, "surviving_patient_id", event)
        merged = _require(event.merged_patient_id, "merged_patient_id", event)
        if event.HasField("survivor"):
            self._store_snapshot(session, event.survivor, event)
        store.merge_patients(
            _model(session),
            merged_id=merged,
            survivor_id=survivor,
            now=self._now(event),
        )

    # Appointments and admissions --------------------------------------------

    def on_appointment_booked(
        self,
        session: Session,
        event: appointments.AppointmentBooked,
        envelope: Envelope,
    ) -> None:
        self._open_appointment(session, event.appointment, event)

    def on_rescheduled(
        self,
        session: Session,
        event: appointments.AppointmentRescheduled,
        envelope: Envelope,
    ) -> None:
        appointment = event.appointment
        previous = event.previous_practitioner_id
        if previous and previous != appointment.practitioner_id:
            store.close_relationships(
                _model(session),
                kind="appointment",
                source_id=appointment.appointment_id,
                closes_at=self._now(event),
                practitioner_id=previous,
            )
        self._open_appointment(session, appointment, event)

    def on_appointment_ended(
        self,
        session: Session,
        event: appointments.AppointmentCancelled | appointments.AppointmentNoShow,
        envelope: Envelope,
    ) -> None:
        store.close_relationships(
            _model(session),
            kind="appointment",
            source_id=_require(
                event.appointment.appointment_id, "appointment_id", event
            ),
            closes_at=self._now(event),
        )

    def on_appointment_completed(
        self,
        session: Session,
        event: appointments.AppointmentCompleted,
        envelope: Envelope,
    ) -> None:
        completed = _time(event.completed_at, self._now(event))
        self._open_appointment(
            session,
            event.appointment,
            event,
            closes_at=completed + store.RELATIONSHIP_RETENTION,
        )

    def _open_appointment(
        self,
        session: Session,
        appointment: appointments.AppointmentSnapshot,
        event: object,
        closes_at: datetime.datetime | None = None,
    ) -> None:
        store.open_relationship(
            _model(session),
            kind="appointment",
            source_id=_require(appointment.appointment_id, "appointment_id", event),
            patient_id=_require(appointment.patient_id, "patient_id", event),
            practitioner_id=_require(
                appointment.practitioner_id, "practitioner_id", event
            ),
            organization_id=appointment.organization_id,
            opened_at=self._now(event),
            closes_at=closes_at,
        )

    def on_patient_admitted(
        self, session: Session, event: appointments.PatientAdmitted, envelope: Envelope
    ) -> None:
        admission_id = _require(event.admission_id, "admission_id", event)
        patient_id = _require(event.patient_id, "patient_id", event)
        team = [event.attending_practitioner_id, *event.care_team_practitioner_ids]
        for practitioner_id in dict.fromkeys(p for p in team if p):
            store.open_relationship(
                _model(session),
                kind="admission",
                source_id=admission_id,
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                organization_id=event.organization_id,
                opened_at=_time(event.admitted_at, self._now(event)),
                closes_at=None,
            )

    def on_patient_discharged(
        self,
        session: Session,
        event: appointments.PatientDischarged,
        envelope: Envelope,
    ) -> None:
        discharged = _time(event.discharged_at, self._now(event))
        store.close_relationships(
            _model(session),
            kind="admission",
            source_id=_require(event.admission_id, "admission_id", event),
            closes_at=discharged + store.RELATIONSHIP_RETENTION,
        )

    # Labs ------------------------------------------------------------------------

    def on_lab_order_placed(
        self, session: Session, event: labs.LabOrderPlaced, envelope: Envelope
    ) -> None:
        placed = _time(event.placed_at, self._now(event))
        store.open_relationship(
            _model(session),
            kind="lab_order",
            source_id=_require(event.order_id, "order_id", event),
            patient_id=_require(event.patient_id, "patient_id", event),
            practitioner_id=event.ordering_practitioner_id,
            organization_id=event.organization_id,
            opened_at=placed,
            closes_at=placed + store.LAB_ORDER_WINDOW,
        )
