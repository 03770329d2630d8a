"""Validate requests of AppointmentsService and turn them into command inputs.

Each function collects every field violation of one request and raises
InvalidArgument naming them all (field paths such as ``rules[1].end_time``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.common.v1 import types_pb2
from mesh.runtime.validation import Violations
from svc_appointments.convert import (
    EXCEPTION_KIND_BY_NUMBER,
    identifiers_to_rows,
    interval_of,
    message_to_json,
)
from svc_appointments.domain import (
    MAX_APPOINTMENT,
    MAX_SLOT_MINUTES,
    MAX_SLOT_WINDOW,
    MIN_SLOT_MINUTES,
    VISIT_TYPE_SYSTEM,
    VISIT_TYPES,
    Interval,
    ScheduleExceptionKind,
    WeeklyRule,
    load_time_zone,
    overlapping_rules,
    parse_clock_time,
)
from svc_appointments.scheduling import (
    AdmitInput,
    BookInput,
    Idempotency,
    PractitionerInput,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_ID_LENGTH = 64
MAX_TEXT_LENGTH = 1000
#: Most practitioners on one admission's care team. Each one is named in the
#: PatientAdmitted event, which must stay below the outbox relay's record
#: limit (librdkafka's message.max.bytes, 1,000,000 bytes by default).
MAX_CARE_TEAM = 100
DEFAULT_VISIT_TYPE = "visit-general"
#: Largest offset a page token may carry: SQL binds OFFSET as a signed
#: 64-bit integer, and this service never issues a larger one.
MAX_PAGE_OFFSET = 2**63 - 1
#: Times accepted in periods and windows. Protobuf allows years 1 to 9999,
#: but local-time conversion and slot arithmetic overflow Python's datetime
#: near those ends, so these bounds keep a wide margin around real schedules.
EARLIEST_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)


def idempotency(operation: str, request: Message) -> Idempotency | None:
    """Return the request's idempotency key with a hash of the other fields."""
    key = getattr(request, "idempotency_key", "")
    if not key:
        return None
    rest = type(request)()
    rest.CopyFrom(request)
    rest.ClearField("idempotency_key")  # type: ignore[arg-type]
    digest = hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()
    return Idempotency(operation=operation, key=key, request_hash=digest)


def page_bounds(v: Violations, page: types_pb2.PageRequest) -> tuple[int, int]:
    """Return (offset, limit) of a page request; the token is an offset."""
    if page.page_size < 0:
        v.add("page.page_size", "must not be negative")
    limit = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    offset = 0
    if page.page_token:
        token = page.page_token
        # isascii() keeps out digits such as "²" that int() rejects.
        if not (token.isascii() and token.isdigit()) or int(token) > MAX_PAGE_OFFSET:
            v.add("page.page_token", "is not a token returned by this service")
        else:
            offset = int(token)
    return offset, limit


def next_page_token(offset: int, limit: int, total: int) -> str:
    return str(offset + limit) if offset + limit < total else ""


def require_id(v: Violations, value: str, field: str) -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > MAX_ID_LENGTH:
        v.add(field, f"is longer than {MAX_ID_LENGTH} characters")


def check_text(v: Violations, value: str, field: str) -> None:
    if len(value) > MAX_TEXT_LENGTH:
        v.add(field, f"is longer than {MAX_TEXT_LENGTH} characters")


def period(v: Violations, value: types_pb2.Period, field: str) -> Interval | None:
    """Return a closed period with both ends set and end after start."""
    if not value.HasField("start"):
        v.add(f"{field}.start", "is required")
    if not value.HasField("end"):
        v.add(f"{field}.end", "is required")
    if not (value.HasField("start") and value.HasField("end")):
        return None
    valid = True
    for bound in ("start", "end"):
        if not _timestamp_in_range(getattr(value, bound)):
            v.add(
                f"{field}.{bound}",
                f"must be a valid timestamp from {EARLIEST_TIME:%Y-%m-%d} to "
                f"{LATEST_TIME:%Y-%m-%d} (UTC)",
            )
            valid = False
    if not valid:
        return None
    interval = interval_of(value)
    if interval.end <= interval.start:
        v.add(f"{field}.end", "must be later than start")
        return None
    return interval


def _timestamp_in_range(stamp: Timestamp) -> bool:
    try:
        moment = stamp.ToDatetime(tzinfo=UTC)
    except ValueError:  # seconds outside years 1 to 9999, or nanos out of range
        return False
    return EARLIEST_TIME <= moment < LATEST_TIME


def expected_version(v: Violations, value: int) -> None:
    if value < 1:
        v.add("expected_version", "is required: the version the change is based on")


def identifiers(
    v: Violations, values: Any, field: str = "identifiers"
) -> list[dict[str, str]]:
    seen = set()
    for index, identifier in enumerate(values):
        if not identifier.system:
            v.add(f"{field}[{index}].system", "is required")
        if not identifier.value:
            v.add(f"{field}[{index}].value", "is required")
        pair = (identifier.system, identifier.value)
        if pair in seen:
            v.add(f"{field}[{index}]", "repeats an earlier identifier")
        seen.add(pair)
    return identifiers_to_rows(values)


def register_practitioner(request: pb.RegisterPractitionerRequest) -> PractitionerInput:
    v = Violations()
    rows = identifiers(v, request.identifiers)
    if not request.names:
        v.add("names", "needs at least one name")
    for index, name in enumerate(request.names):
        if not (name.family or name.given or name.text):
            v.add(f"names[{index}]", "needs a family name, a given name or a text")
    v.check()
    return PractitionerInput(
        identifiers=rows,
        names=[message_to_json(name) for name in request.names],
        organization_id=request.organization_id,
        specialty=message_to_json(request.specialty),
    )


def register_organization(
    request: pb.RegisterOrganizationRequest,
) -> list[dict[str, str]]:
    v = Violations()
    v.require(request.name, "name")
    rows = identifiers(v, request.identifiers)
    if request.time_zone and load_time_zone(request.time_zone) is None:
        v.add("time_zone", f"{request.time_zone!r} is not an IANA time zone")
    v.check()
    return rows


def weekly_rules(request: pb.SetWeeklyScheduleRequest) -> list[dict[str, Any]]:
    """Validate the rules and return them in their stored form."""
    v = Violations()
    require_id(v, request.practitioner_id, "practitioner_id")
    if request.expected_version < 0:
        v.add("expected_version", "must not be negative")
    check_text(v, request.reason, "reason")
    # (index in the request, rule) of every valid rule.
    parsed: list[tuple[int, WeeklyRule]] = []
    for index, rule in enumerate(request.rules):
        field = f"rules[{index}]"
        if rule.weekday == pb.WEEKDAY_UNSPECIFIED:
            v.add(f"{field}.weekday", "is required")
        start = parse_clock_time(rule.start_time)
        end = parse_clock_time(rule.end_time)
        if start is None:
            v.add(f"{field}.start_time", f"{rule.start_time!r} is not HH:MM")
        if end is None:
            v.add(f"{field}.end_time", f"{rule.end_time!r} is not HH:MM")
        if start is not None and end is not None and end <= start:
            v.add(f"{field}.end_time", "must be later than start_time")
        if not MIN_SLOT_MINUTES <= rule.slot_minutes <= MAX_SLOT_MINUTES:
            v.add(
                f"{field}.slot_minutes",
                f"must be between {MIN_SLOT_MINUTES} and {MAX_SLOT_MINUTES}",
            )
        # Only valid rules take part in the overlap check below.
        if start is not None and end is not None and end > start and rule.weekday:
            parsed.append(
                (index, WeeklyRule(rule.weekday, start, end, rule.slot_minutes))
            )
    for first, second in overlapping_rules([rule for _, rule in parsed]):
        v.add(
            f"rules[{parsed[second][0]}]",
            f"overlaps rules[{parsed[first][0]}] on the same weekday",
        )
    v.check()
    return [
        {
            "weekday": rule.weekday,
            "start": rule.start_time,
            "end": rule.end_time,
            "slot_minutes": rule.slot_minutes,
        }
        for rule in request.rules
    ]


def schedule_exception(
    request: pb.AddScheduleExceptionRequest,
) -> tuple[ScheduleExceptionKind, Interval]:
    v = Violations()
    require_id(v, request.practitioner_id, "practitioner_id")
    kind = EXCEPTION_KIND_BY_NUMBER.get(request.kind)
    if kind is None:
        v.add("kind", "is required: LEAVE or HOLIDAY")
    interval = period(v, request.period, "period")
    check_text(v, request.reason, "reason")
    v.check()
    assert kind is not None and interval is not None
    return kind, interval


def holiday(request: pb.AddHolidayRequest) -> Interval:
    v = Violations()
    require_id(v, request.organization_id, "organization_id")
    interval = period(v, request.period, "period")
    check_text(v, request.reason, "reason")
    v.check()
    assert interval is not None
    return interval


def find_slots(request: pb.FindSlotsRequest) -> tuple[Interval, int, int]:
    v = Violations()
    require_id(v, request.practitioner_id, "practitioner_id")
    window = period(v, request.window, "window")
    if window is not None and window.duration > MAX_SLOT_WINDOW:
        v.add("window", f"is longer than {MAX_SLOT_WINDOW.days} days; split it")
    offset, limit = page_bounds(v, request.page)
    v.check()
    assert window is not None
    return window, offset, limit


def service_type(v: Violations, coding: types_pb2.Coding) -> tuple[str, str, str]:
    code = coding.code or DEFAULT_VISIT_TYPE
    if coding.system and coding.system != VISIT_TYPE_SYSTEM:
        v.add("service_type.system", f"must be {VISIT_TYPE_SYSTEM}")
    if code not in VISIT_TYPES:
        v.add("service_type.code", f"must be one of {', '.join(sorted(VISIT_TYPES))}")
        return VISIT_TYPE_SYSTEM, code, ""
    return VISIT_TYPE_SYSTEM, code, VISIT_TYPES[code]


def book(request: pb.BookRequest) -> BookInput:
    v = Violations()
    require_id(v, request.patient_id, "patient_id")
    require_id(v, request.practitioner_id, "practitioner_id")
    interval = period(v, request.period, "period")
    if interval is not None and interval.duration > MAX_APPOINTMENT:
        v.add("period", f"is longer than {MAX_APPOINTMENT.seconds // 3600} hours")
    coding = service_type(v, request.service_type)
    check_text(v, request.reason, "reason")
    if request.location_id:
        require_id(v, request.location_id, "location_id")
    v.check()
    assert interval is not None
    return BookInput(
        patient_id=request.patient_id,
        practitioner_id=request.practitioner_id,
        period=interval,
        service_type=coding,
        reason=request.reason,
        location_id=request.location_id,
    )


def reschedule(request: pb.RescheduleRequest) -> Interval:
    v = Violations()
    require_id(v, request.appointment_id, "appointment_id")
    expected_version(v, request.expected_version)
    interval = period(v, request.period, "period")
    if interval is not None and interval.duration > MAX_APPOINTMENT:
        v.add("period", f"is longer than {MAX_APPOINTMENT.seconds // 3600} hours")
    check_text(v, request.reason, "reason")
    v.check()
    assert interval is not None
    return interval


def appointment_change(request: Any) -> None:
    """Validate a request that names an appointment and its expected version."""
    v = Violations()
    require_id(v, request.appointment_id, "appointment_id")
    expected_version(v, request.expected_version)
    v.check()


def cancel(request: pb.CancelRequest) -> None:
    v = Violations()
    require_id(v, request.appointment_id, "appointment_id")
    expected_version(v, request.expected_version)
    if request.cancelled_by == pb.CANCELLED_BY_UNSPECIFIED:
        v.add("cancelled_by", "is required: PATIENT, PRACTITIONER or HOSPITAL")
    check_text(v, request.reason, "reason")
    v.check()


def list_appointments(
    request: pb.ListAppointmentsRequest,
) -> tuple[Interval | None, int, int]:
    v = Violations()
    if bool(request.patient_id) == bool(request.practitioner_id):
        v.add("patient_id", "exactly one of patient_id and practitioner_id is required")
    window = None
    if request.HasField("window"):
        window = period(v, request.window, "window")
    offset, limit = page_bounds(v, request.page)
    v.check()
    return window, offset, limit


def admit(request: pb.AdmitRequest) -> AdmitInput:
    v = Violations()
    require_id(v, request.patient_id, "patient_id")
    require_id(v, request.organization_id, "organization_id")
    v.require(request.ward, "ward")
    check_text(v, request.ward, "ward")
    if request.emergency and request.appointment_id:
        v.add("appointment_id", "must be empty for an emergency admission")
    elif request.appointment_id:
        require_id(v, request.appointment_id, "appointment_id")
    if not request.emergency:
        require_id(v, request.attending_practitioner_id, "attending_practitioner_id")
    elif request.attending_practitioner_id:
        require_id(v, request.attending_practitioner_id, "attending_practitioner_id")
    care_team = request.care_team_practitioner_ids
    if len(care_team) > MAX_CARE_TEAM:
        v.add(
            "care_team_practitioner_ids",
            f"has {len(care_team)} ids; at most {MAX_CARE_TEAM}",
        )
    for index, member in enumerate(care_team[:MAX_CARE_TEAM]):
        if not member:
            v.add(f"care_team_practitioner_ids[{index}]", "is empty")
        else:
            require_id(v, member, f"care_team_practitioner_ids[{index}]")
    check_text(v, request.reason, "reason")
    v.check()
    return AdmitInput(
        patient_id=request.patient_id,
        organization_id=request.organization_id,
        ward=request.ward,
        emergency=request.emergency,
        attending_practitioner_id=request.attending_practitioner_id,
        care_team_practitioner_ids=list(request.care_team_practitioner_ids),
        appointment_id=request.appointment_id,
        reason=request.reason,
    )
