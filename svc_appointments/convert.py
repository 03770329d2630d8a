"""Translate between stored rows and the protobuf messages of the contract."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import events_pb2
from hin.common.v1 import types_pb2
from svc_appointments.domain import (
    AdmissionStatus,
    AppointmentStatus,
    Interval,
    ScheduleExceptionKind,
)
from svc_appointments.store import (
    AdmissionRow,
    AppointmentRow,
    OrganizationRow,
    PractitionerRow,
    ScheduleExceptionRow,
    ScheduleRow,
)

APPOINTMENT_STATUS = {
    AppointmentStatus.BOOKED: pb.APPOINTMENT_STATUS_BOOKED,
    AppointmentStatus.CHECKED_IN: pb.APPOINTMENT_STATUS_CHECKED_IN,
    AppointmentStatus.COMPLETED: pb.APPOINTMENT_STATUS_COMPLETED,
    AppointmentStatus.CANCELLED: pb.APPOINTMENT_STATUS_CANCELLED,
    AppointmentStatus.NO_SHOW: pb.APPOINTMENT_STATUS_NO_SHOW,
}
EXCEPTION_KIND = {
    ScheduleExceptionKind.LEAVE: pb.SCHEDULE_EXCEPTION_KIND_LEAVE,
    ScheduleExceptionKind.HOLIDAY: pb.SCHEDULE_EXCEPTION_KIND_HOLIDAY,
}
EXCEPTION_KIND_BY_NUMBER = {number: kind for kind, number in EXCEPTION_KIND.items()}
ADMISSION_STATUS = {
    AdmissionStatus.ADMITTED: pb.ADMISSION_STATUS_ADMITTED,
    AdmissionStatus.DISCHARGED: pb.ADMISSION_STATUS_DISCHARGED,
}
CANCELLED_BY = {
    pb.CANCELLED_BY_PATIENT: "patient",
    pb.CANCELLED_BY_PRACTITIONER: "practitioner",
    pb.CANCELLED_BY_HOSPITAL: "hospital",
}


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def to_datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def period_message(interval: Interval) -> types_pb2.Period:
    return types_pb2.Period(
        start=timestamp(interval.start), end=timestamp(interval.end)
    )


def interval_of(period: types_pb2.Period) -> Interval:
    return Interval(to_datetime(period.start), to_datetime(period.end))


def identifiers_to_rows(
    identifiers: Iterable[types_pb2.Identifier],
) -> list[dict[str, str]]:
    return [
        {"system": i.system, "value": i.value, "type_code": i.type_code}
        for i in identifiers
    ]


def identifier_messages(rows: Sequence[dict[str, str]]) -> list[types_pb2.Identifier]:
    return [
        types_pb2.Identifier(
            system=row["system"], value=row["value"], type_code=row.get("type_code", "")
        )
        for row in rows
    ]


def message_to_json(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def practitioner_message(row: PractitionerRow) -> pb.Practitioner:
    return pb.Practitioner(
        practitioner_id=row.id,
        identifiers=identifier_messages(row.identifiers),
        names=[ParseDict(name, types_pb2.HumanName()) for name in row.names],
        organization_id=row.organization_id,
        specialty=ParseDict(row.specialty, types_pb2.Coding()),
        active=row.active,
        version=row.version,
    )


def organization_message(row: OrganizationRow) -> pb.Organization:
    return pb.Organization(
        organization_id=row.id,
        name=row.name,
        identifiers=identifier_messages(row.identifiers),
        time_zone=row.time_zone,
    )


def weekly_rule_message(rule: dict[str, Any]) -> pb.WeeklyRule:
    return pb.WeeklyRule(
        weekday=rule["weekday"],
        start_time=rule["start"],
        end_time=rule["end"],
        slot_minutes=rule["slot_minutes"],
    )


def exception_message(row: ScheduleExceptionRow) -> pb.ScheduleException:
    return pb.ScheduleException(
        exception_id=row.id,
        kind=EXCEPTION_KIND[ScheduleExceptionKind(row.kind)],
        period=period_message(Interval(row.start_at, row.end_at)),
        reason=row.reason,
    )


def schedule_message(
    row: ScheduleRow, exceptions: Sequence[ScheduleExceptionRow]
) -> pb.WeeklySchedule:
    return pb.WeeklySchedule(
        practitioner_id=row.practitioner_id,
        organization_id=row.organization_id,
        location_id=row.location_id,
        time_zone=row.time_zone,
        rules=[weekly_rule_message(rule) for rule in row.rules],
        exceptions=[exception_message(e) for e in exceptions],
        version=row.version,
    )


def service_type(row: AppointmentRow) -> types_pb2.Coding:
    return types_pb2.Coding(
        system=row.service_type_system,
        code=row.service_type_code,
        display=row.service_type_display,
    )


def appointment_message(row: AppointmentRow) -> pb.Appointment:
    return pb.Appointment(
        appointment_id=row.id,
        patient_id=row.patient_id,
        practitioner_id=row.practitioner_id,
        organization_id=row.organization_id,
        location_id=row.location_id,
        period=period_message(row.period),
        service_type=service_type(row),
        reason=row.reason,
        status=APPOINTMENT_STATUS[AppointmentStatus(row.status)],
        version=row.version,
        checked_in_at=timestamp(row.checked_in_at),
        completed_at=timestamp(row.completed_at),
        encounter_id=row.encounter_id,
        cancellation_reason=row.cancellation_reason,
        imported=row.imported,
    )


def appointment_snapshot(row: AppointmentRow) -> events_pb2.AppointmentSnapshot:
    return events_pb2.AppointmentSnapshot(
        appointment_id=row.id,
        patient_id=row.patient_id,
        practitioner_id=row.practitioner_id,
        organization_id=row.organization_id,
        location_id=row.location_id,
        period=period_message(row.period),
        service_type=service_type(row),
        reason=row.reason,
        version=row.version,
    )


def admission_message(row: AdmissionRow) -> pb.Admission:
    return pb.Admission(
        admission_id=row.id,
        patient_id=row.patient_id,
        organization_id=row.organization_id,
        ward=row.ward,
        emergency=row.emergency,
        attending_practitioner_id=row.attending_practitioner_id,
        care_team_practitioner_ids=row.care_team_practitioner_ids,
        appointment_id=row.appointment_id,
        reason=row.reason,
        status=ADMISSION_STATUS[AdmissionStatus(row.status)],
        admitted_at=timestamp(row.admitted_at),
        discharged_at=timestamp(row.discharged_at),
        version=row.version,
    )
