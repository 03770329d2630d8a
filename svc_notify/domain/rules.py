"""Recipients and texts of the notifications that each consumed event causes.

Each ``plan_*`` function turns one event into the notifications it causes,
without touching storage. Role recipients are expanded to people later, when
the notification is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp

from hin.appointments.v1 import events_pb2 as appointments
from hin.authz.v1 import events_pb2 as authz
from hin.billing.v1 import events_pb2 as billing
from hin.common.v1 import types_pb2 as common
from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import notify_service_pb2 as pb
from svc_notify.domain.money import format_money
from svc_notify.domain.recipients import (
    ON_CALL_ROLE,
    PRIVACY_OFFICER_ROLE,
    Recipient,
    patient,
    practitioner,
    role,
)
from svc_notify.errors import InvalidEvent

Kind = pb.NotificationKind
NORMAL = pb.NOTIFICATION_PRIORITY_NORMAL
URGENT = pb.NOTIFICATION_PRIORITY_URGENT

_INTERPRETATIONS = {
    labs.INTERPRETATION_NORMAL: "normal",
    labs.INTERPRETATION_HIGH: "high",
    labs.INTERPRETATION_LOW: "low",
    labs.INTERPRETATION_CRITICAL_HIGH: "critical high",
    labs.INTERPRETATION_CRITICAL_LOW: "critical low",
    labs.INTERPRETATION_ABNORMAL: "abnormal",
}
_STATUSES = {
    labs.RESULT_STATUS_PRELIMINARY: "preliminary",
    labs.RESULT_STATUS_FINAL: "final",
    labs.RESULT_STATUS_CORRECTED: "corrected",
}
_OUTCOMES = {
    billing.ADJUDICATION_OUTCOME_APPROVED: "approved",
    billing.ADJUDICATION_OUTCOME_PARTIAL: "partially approved",
    billing.ADJUDICATION_OUTCOME_DENIED: "denied",
}


@dataclass(frozen=True)
class PlannedNotification:
    """One notification an event causes, before roles are expanded."""

    recipient: Recipient
    kind: int
    priority: int
    #: Patient the notification is about; empty for none.
    patient_id: str
    organization_id: str
    #: Template placeholders and ids the recipient's application can act on.
    attributes: Mapping[str, str] = field(default_factory=dict)


def result_attributes(result: labs.TestResult) -> dict[str, str]:
    """Return the template attributes of a lab result."""
    return {
        "result_id": result.result_id,
        "order_id": result.order_id,
        "test": result.test.display or result.test.code or "-",
        "value": format_result_value(result.value),
        "interpretation": _INTERPRETATIONS.get(result.interpretation, "unknown"),
        "status": _STATUSES.get(result.status, "unknown"),
        "version": str(result.version),
    }


def format_result_value(value: labs.ResultValue) -> str:
    """Return a result value as a lab report shows it, such as "6.9 mmol/L"."""
    kind = value.WhichOneof("value")
    if kind == "quantity":
        text = f"{value.comparator}{value.quantity}"
        return f"{text} {value.unit}".strip()
    if kind == "text":
        return value.text
    if kind == "coded":
        if value.coded.text:
            return value.coded.text
        codings = value.coded.codings
        return (codings[0].display or codings[0].code) if codings else "-"
    return "-"


def check_result(result: labs.TestResult) -> None:
    """Raise InvalidEvent when a result lacks the ids a notification needs."""
    missing = [
        name for name in ("result_id", "patient_id") if not getattr(result, name)
    ]
    if missing:
        raise InvalidEvent(
            f"lab result event lacks {', '.join(missing)}; it cannot be routed",
            reason="RESULT_IDS_MISSING",
        )


def plan_result(
    result: labs.TestResult,
    *,
    corrected: bool,
    organization_id: str,
) -> list[PlannedNotification]:
    """Tell the ordering clinician and the patient about a result.

    A critical result goes to the clinician as urgent; the escalation loop
    starts separately. The patient's message is never urgent.
    """
    check_result(result)
    attributes = {**result_attributes(result), "patient_id": result.patient_id}
    routine = (
        Kind.NOTIFICATION_KIND_TEST_RESULT_CORRECTED
        if corrected
        else Kind.NOTIFICATION_KIND_TEST_RESULT
    )
    planned = [
        PlannedNotification(
            patient(result.patient_id),
            routine,
            NORMAL,
            result.patient_id,
            organization_id,
            attributes,
        )
    ]
    if result.ordering_practitioner_id:
        critical = result.critical
        planned.insert(
            0,
            PlannedNotification(
                practitioner(result.ordering_practitioner_id),
                Kind.NOTIFICATION_KIND_CRITICAL_RESULT if critical else routine,
                URGENT if critical else NORMAL,
                result.patient_id,
                organization_id,
                attributes,
            ),
        )
    return planned


def plan_appointment(
    appointment: appointments.AppointmentSnapshot,
    kind: int,
    *,
    organization_id: str,
    extra: Mapping[str, str] | None = None,
) -> list[PlannedNotification]:
    """Tell the patient that an appointment was booked, moved or cancelled."""
    if not appointment.appointment_id or not appointment.patient_id:
        raise InvalidEvent(
            "appointment event lacks appointment_id or patient_id",
            reason="APPOINTMENT_IDS_MISSING",
        )
    attributes = {
        "appointment_id": appointment.appointment_id,
        "practitioner_id": appointment.practitioner_id,
        "start": timestamp_text(appointment.period.start),
        **(extra or {}),
    }
    return [
        PlannedNotification(
            patient(appointment.patient_id),
            kind,
            NORMAL,
            appointment.patient_id,
            appointment.organization_id or organization_id,
            attributes,
        )
    ]


def plan_availability(
    event: appointments.PractitionerAvailabilityChanged,
    patient_by_appointment: Mapping[str, str],
) -> list[PlannedNotification]:
    """Tell the patient of each affected, known appointment why it changes."""
    organization_id = event.organization_id or event.context.organization_id
    planned = []
    for appointment_id in event.affected_appointment_ids:
        patient_id = patient_by_appointment.get(appointment_id)
        if not patient_id:
            continue
        planned.append(
            PlannedNotification(
                patient(patient_id),
                Kind.NOTIFICATION_KIND_PRACTITIONER_UNAVAILABLE,
                NORMAL,
                patient_id,
                organization_id,
                {
                    "appointment_id": appointment_id,
                    "practitioner_id": event.practitioner_id,
                },
            )
        )
    return planned


def plan_charge(event: billing.ChargePosted) -> list[PlannedNotification]:
    """Tell the patient about a posted charge."""
    return _to_patient(
        event.patient_id,
        Kind.NOTIFICATION_KIND_CHARGE_POSTED,
        event.context.organization_id,
        {
            "charge_id": event.charge_id,
            "service": event.service.display or event.service.code or "-",
            "amount": money_text(event.amount),
        },
    )


def plan_invoice(event: billing.InvoiceIssued) -> list[PlannedNotification]:
    """Tell the patient about an issued invoice."""
    return _to_patient(
        event.patient_id,
        Kind.NOTIFICATION_KIND_INVOICE_ISSUED,
        event.context.organization_id,
        {
            "invoice_id": event.invoice_id,
            "total": money_text(event.total),
            "patient_responsibility": money_text(event.patient_responsibility),
            "due_at": timestamp_text(event.due_at),
        },
    )


def plan_claim(event: billing.ClaimAdjudicated) -> list[PlannedNotification]:
    """Tell the patient how the payer decided a claim."""
    return _to_patient(
        event.patient_id,
        Kind.NOTIFICATION_KIND_CLAIM_ADJUDICATED,
        event.context.organization_id,
        {
            "claim_id": event.claim_id,
            "outcome": _OUTCOMES.get(event.outcome, "unknown"),
            "approved": money_text(event.approved),
            "patient_responsibility": money_text(event.patient_responsibility),
        },
    )


def plan_break_glass(
    event: authz.BreakGlassAccessGranted,
) -> list[PlannedNotification]:
    """Tell the privacy officers of the organization about a break-the-glass."""
    organization_id = event.organization_id or event.context.organization_id
    if not organization_id or not event.patient_id:
        raise InvalidEvent(
            "BreakGlassAccessGranted lacks organization_id or patient_id",
            reason="BREAK_GLASS_IDS_MISSING",
        )
    return [
        PlannedNotification(
            role(PRIVACY_OFFICER_ROLE, organization_id),
            Kind.NOTIFICATION_KIND_BREAK_GLASS,
            URGENT,
            event.patient_id,
            organization_id,
            {
                "grant_id": event.grant_id,
                "subject": event.subject,
                "patient_id": event.patient_id,
                "reason": event.reason,
                "expires_at": timestamp_text(event.expires_at),
            },
        )
    ]


def plan_admission(event: appointments.PatientAdmitted) -> list[PlannedNotification]:
    """Page the on-call staff of the ward, or of the organization."""
    organization_id = event.organization_id or event.context.organization_id
    if not organization_id or not event.patient_id:
        raise InvalidEvent(
            "PatientAdmitted lacks organization_id or patient_id",
            reason="ADMISSION_IDS_MISSING",
        )
    return [
        PlannedNotification(
            role(ON_CALL_ROLE, organization_id),
            Kind.NOTIFICATION_KIND_PATIENT_ADMITTED,
            URGENT if event.emergency else NORMAL,
            event.patient_id,
            organization_id,
            {
                "admission_id": event.admission_id,
                "patient_id": event.patient_id,
                "ward": event.ward or "-",
                "department": event.ward,
                "emergency": "yes" if event.emergency else "no",
            },
        )
    ]


def money_text(money: common.Money) -> str:
    """Return a Money message as text, or "-" when it has no currency."""
    if not money.currency:
        return "-"
    return format_money(money.currency, money.minor_units)


def timestamp_text(timestamp: Timestamp) -> str:
    """Return an ISO 8601 UTC instant, or "" for an unset timestamp."""
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return timestamp.ToDatetime(tzinfo=UTC).isoformat()


def _to_patient(
    patient_id: str, kind: int, organization_id: str, attributes: dict[str, str]
) -> list[PlannedNotification]:
    if not patient_id:
        raise InvalidEvent(
            "billing event lacks patient_id", reason="PATIENT_ID_MISSING"
        )
    return [
        PlannedNotification(
            patient(patient_id), kind, NORMAL, patient_id, organization_id, attributes
        )
    ]
