"""Event handlers: decide whom to notify about each consumed event.

Each handler runs in the consumer's transaction together with the inbox row.
It stores intents, which the dispatcher turns into notifications after a
consent check, and keeps the local copies of patients, appointments and
critical result alerts. Nothing here talks to the network, so a slow SMTP
server or authorizer never holds up the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from google.protobuf.message import Message
from sqlalchemy import event as sa_event
from sqlmodel import Session

from hin.appointments.v1 import events_pb2 as appointments
from hin.authz.v1 import events_pb2 as authz
from hin.billing.v1 import events_pb2 as billing
from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import notify_service_pb2 as pb
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import Envelope, Handler, Outbox
from svc_notify import escalation, store
from svc_notify.domain import rules
from svc_notify.domain.recipients import RecipientKind, patient
from svc_notify.domain.rules import PlannedNotification, timestamp_text
from svc_notify.errors import InvalidEvent
from svc_notify.feed import DISPATCH, Wakeups

logger = logging.getLogger(__name__)

Kind = pb.NotificationKind
E = TypeVar("E", bound=Message)


class EventHandlers:
    """The consumer's handlers, with the collaborators they share."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        escalation_delay: timedelta,
        wakeups: Wakeups,
        clock: Callable[[], datetime],
    ) -> None:
        self._outbox = outbox
        self._delay = escalation_delay
        self._wakeups = wakeups
        self._clock = clock

    def handlers(self) -> list[Handler[Any]]:
        """Return one Handler per consumed event type."""
        return [
            _bind(records.PatientRegistered, self.on_patient_registered),
            _bind(records.PatientRecordUpdated, self.on_patient_updated),
            _bind(records.PatientsMerged, self.on_patients_merged),
            _bind(labs.TestResultPublished, self.on_result_published),
            _bind(labs.TestResultCorrected, self.on_result_corrected),
            _bind(labs.CriticalResultAcknowledged, self.on_result_acknowledged),
            _bind(appointments.AppointmentBooked, self.on_appointment_booked),
            _bind(appointments.AppointmentRescheduled, self.on_appointment_moved),
            _bind(appointments.AppointmentCancelled, self.on_appointment_cancelled),
            _bind(
                appointments.PractitionerAvailabilityChanged,
                self.on_availability_changed,
            ),
            _bind(appointments.PatientAdmitted, self.on_patient_admitted),
            _bind(billing.ChargePosted, self.on_charge_posted),
            _bind(billing.InvoiceIssued, self.on_invoice_issued),
            _bind(billing.ClaimAdjudicated, self.on_claim_adjudicated),
            _bind(authz.BreakGlassAccessGranted, self.on_break_glass),
        ]

    # Patients ------------------------------------------------------------

    def on_patient_registered(
        self, session: Session, event: records.PatientRegistered, envelope: Envelope
    ) -> None:
        """Keep the contact details of a new patient."""
        _require(event.patient.patient_id, "patient.patient_id", envelope)
        store.save_patient(session, event.patient, self._clock())

    def on_patient_updated(
        self, session: Session, event: records.PatientRecordUpdated, envelope: Envelope
    ) -> None:
        """Refresh the contact details of a patient."""
        _require(event.patient.patient_id, "patient.patient_id", envelope)
        store.save_patient(session, event.patient, self._clock())

    def on_patients_merged(
        self, session: Session, event: records.PatientsMerged, envelope: Envelope
    ) -> None:
        """Point the merged record at the survivor and refresh the survivor."""
        _require(event.merged_patient_id, "merged_patient_id", envelope)
        _require(event.surviving_patient_id, "surviving_patient_id", envelope)
        now = self._clock()
        store.merge_patient(
            session, event.merged_patient_id, event.surviving_patient_id, now
        )
        if event.survivor.patient_id == event.surviving_patient_id:
            store.save_patient(session, event.survivor, now)

    # Lab results ---------------------------------------------------------

    def on_result_published(
        self, session: Session, event: labs.TestResultPublished, envelope: Envelope
    ) -> None:
        """Tell the ordering clinician and the patient; open a critical alert.

        A historical result, imported from an earlier record, tells no one.
        """
        if event.historical:
            logger.info(
                "historical result; no notification",
                extra={"result_id": event.result.result_id},
            )
            return
        self._handle_result(session, event.result, event, envelope, corrected=False)

    def on_result_corrected(
        self, session: Session, event: labs.TestResultCorrected, envelope: Envelope
    ) -> None:
        """Tell the ordering clinician and the patient about a correction."""
        self._handle_result(session, event.result, event, envelope, corrected=True)

    def _handle_result(
        self,
        session: Session,
        result: labs.TestResult,
        event: labs.TestResultPublished | labs.TestResultCorrected,
        envelope: Envelope,
        *,
        corrected: bool,
    ) -> None:
        rules.check_result(result)
        patient_id = store.resolve_patient(session, result.patient_id)
        organization_id = (
            result.performing_organization_id or event.context.organization_id
        )
        planned = rules.plan_result(
            result, corrected=corrected, organization_id=organization_id
        )
        self._store(session, planned, envelope, patient_id=patient_id)
        if result.critical:
            alert = escalation.open_alert(
                session,
                outbox=self._outbox,
                result=result,
                patient_id=patient_id,
                organization_id=organization_id,
                source_event_id=envelope.id,
                now=self._clock(),
                delay=self._delay,
            )
            if alert is not None:
                logger.info(
                    "critical result alert opened",
                    extra={"alert_id": alert.alert_id, "result_id": result.result_id},
                )

    def on_result_acknowledged(
        self,
        session: Session,
        event: labs.CriticalResultAcknowledged,
        envelope: Envelope,
    ) -> None:
        """Stop the escalation of an acknowledged critical result."""
        _require(event.result_id, "result_id", envelope)
        acknowledged_at = (
            event.acknowledged_at.ToDatetime(tzinfo=UTC)
            if event.HasField("acknowledged_at")
            else self._clock()
        )
        # NOTE: an acknowledgment that arrives before its result is not stored,
        # so a later alert for that result would still escalate. Labs publishes
        # both events on the patient's partition, result first.
        closed = escalation.acknowledge(
            session,
            result_id=event.result_id,
            acknowledged_by=event.acknowledged_by,
            acknowledged_at=acknowledged_at,
        )
        logger.info(
            "critical result acknowledged",
            extra={"result_id": event.result_id, "alerts_closed": closed},
        )

    # Appointments --------------------------------------------------------

    def on_appointment_booked(
        self,
        session: Session,
        event: appointments.AppointmentBooked,
        envelope: Envelope,
    ) -> None:
        """Tell the patient about a booking."""
        self._handle_appointment(
            session, event, envelope, Kind.NOTIFICATION_KIND_APPOINTMENT_BOOKED, {}
        )

    def on_appointment_moved(
        self,
        session: Session,
        event: appointments.AppointmentRescheduled,
        envelope: Envelope,
    ) -> None:
        """Tell the patient that an appointment moved."""
        self._handle_appointment(
            session,
            event,
            envelope,
            Kind.NOTIFICATION_KIND_APPOINTMENT_RESCHEDULED,
            {"previous_start": timestamp_text(event.previous_period.start)},
        )

    def on_appointment_cancelled(
        self,
        session: Session,
        event: appointments.AppointmentCancelled,
        envelope: Envelope,
    ) -> None:
        """Tell the patient that an appointment was cancelled."""
        self._handle_appointment(
            session,
            event,
            envelope,
            Kind.NOTIFICATION_KIND_APPOINTMENT_CANCELLED,
            {"cancelled_by": event.cancelled_by or "unknown"},
        )

    def _handle_appointment(
        self,
        session: Session,
        event: Any,
        envelope: Envelope,
        kind: int,
        extra: dict[str, str],
    ) -> None:
        appointment: appointments.AppointmentSnapshot = event.appointment
        planned = rules.plan_appointment(
            appointment,
            kind,
            organization_id=event.context.organization_id,
            extra=extra,
        )
        store.save_appointment(
            session,
            appointment_id=appointment.appointment_id,
            patient_id=appointment.patient_id,
            practitioner_id=appointment.practitioner_id,
            organization_id=appointment.organization_id,
        )
        self._store(
            session,
            planned,
            envelope,
            patient_id=store.resolve_patient(session, appointment.patient_id),
        )

    def on_availability_changed(
        self,
        session: Session,
        event: appointments.PractitionerAvailabilityChanged,
        envelope: Envelope,
    ) -> None:
        """Tell the patients of the affected appointments why they change."""
        known = store.patients_by_appointment(
            session, list(event.affected_appointment_ids)
        )
        # One notification per patient, for the first affected appointment.
        first_per_patient: dict[str, str] = {}
        for appointment_id in event.affected_appointment_ids:
            patient_id = known.get(appointment_id)
            if patient_id:
                resolved = store.resolve_patient(session, patient_id)
                first_per_patient.setdefault(resolved, appointment_id)
        planned = rules.plan_availability(
            event, {a: p for p, a in first_per_patient.items()}
        )
        for item in planned:
            self._store(session, [item], envelope, patient_id=item.patient_id)

    def on_patient_admitted(
        self, session: Session, event: appointments.PatientAdmitted, envelope: Envelope
    ) -> None:
        """Page the on-call staff about an admission."""
        planned = rules.plan_admission(event)
        self._store(
            session,
            planned,
            envelope,
            patient_id=store.resolve_patient(session, event.patient_id),
        )

    # Billing and access --------------------------------------------------

    def on_charge_posted(
        self, session: Session, event: billing.ChargePosted, envelope: Envelope
    ) -> None:
        """Tell the patient about a charge."""
        self._store_for_patient(session, rules.plan_charge(event), envelope)

    def on_invoice_issued(
        self, session: Session, event: billing.InvoiceIssued, envelope: Envelope
    ) -> None:
        """Tell the patient about an invoice."""
        self._store_for_patient(session, rules.plan_invoice(event), envelope)

    def on_claim_adjudicated(
        self, session: Session, event: billing.ClaimAdjudicated, envelope: Envelope
    ) -> None:
        """Tell the patient how a claim was decided."""
        self._store_for_patient(session, rules.plan_claim(event), envelope)

    def on_break_glass(
        self,
        session: Session,
        event: authz.BreakGlassAccessGranted,
        envelope: Envelope,
    ) -> None:
        """Tell the privacy officers about an emergency access."""
        planned = rules.plan_break_glass(event)
        self._store(
            session,
            planned,
            envelope,
            patient_id=store.resolve_patient(session, event.patient_id),
        )

    # Shared --------------------------------------------------------------

    def _store_for_patient(
        self, session: Session, planned: list[PlannedNotification], envelope: Envelope
    ) -> None:
        patient_id = store.resolve_patient(session, planned[0].patient_id)
        self._store(session, planned, envelope, patient_id=patient_id)

    def _store(
        self,
        session: Session,
        planned: Iterable[PlannedNotification],
        envelope: Envelope,
        *,
        patient_id: str,
    ) -> None:
        """Store intents about ``patient_id``, the merge survivor of the event's."""
        intents = []
        for item in planned:
            recipient = item.recipient
            if recipient.kind is RecipientKind.PATIENT:
                recipient = patient(patient_id)
            attributes = dict(item.attributes)
            if "patient_id" in attributes:
                attributes["patient_id"] = patient_id
            intents.append(
                store.NewIntent(
                    recipient=str(recipient),
                    kind=item.kind,
                    priority=item.priority,
                    patient_id=patient_id,
                    organization_id=item.organization_id,
                    attributes=attributes,
                )
            )
        added = store.add_intents(
            session,
            source_event_id=envelope.id,
            source_event_type=envelope.type,
            intents=intents,
            now=self._clock(),
        )
        if added:
            _wake_after_commit(session, self._wakeups)


def _bind(
    event_type: type[E], fn: Callable[[Session, E, Envelope], None]
) -> Handler[Any]:
    # The consumer's transactions are sqlmodel Sessions, a subclass of the
    # SQLAlchemy Session that Handler is typed with.
    return Handler(event_type, cast(Any, fn))


def _wake_after_commit(session: Session, wakeups: Wakeups) -> None:
    def wake(_session: Session) -> None:
        wakeups.notify(DISPATCH)

    sa_event.listen(session, "after_commit", wake, once=True)


def _require(value: str, field: str, envelope: Envelope) -> None:
    if not value:
        raise InvalidEvent(
            f"event {envelope.id} of type {envelope.type} lacks {field}",
            reason="EVENT_FIELD_MISSING",
        )
