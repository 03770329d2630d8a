"""Scheduling rules: weekly hours, slots, availability and appointment states.

Everything here is plain Python on UTC-aware datetimes; no gRPC and no SQL.
Weekly rules are wall-clock times in the organization's IANA time zone, so a
Monday 09:00 rule stays 09:00 local time across daylight-saving changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIME_ZONE = "Africa/Cairo"

VISIT_TYPE_SYSTEM = "urn:hin:code:visit-type"
#: Visit types an appointment may carry; billing prices these codes.
VISIT_TYPES: dict[str, str] = {
    "visit-general": "General consultation",
    "visit-specialist": "Specialist consultation",
    "visit-followup": "Follow-up visit",
    "visit-emergency": "Emergency visit",
    "visit-inpatient": "Inpatient stay",
}

#: Visit type of an imported encounter, by FHIR v3 ActCode encounter class.
VISIT_TYPE_BY_ENCOUNTER_CLASS: dict[str, str] = {
    "AMB": "visit-general",
    "EMER": "visit-emergency",
    "IMP": "visit-inpatient",
}

MIN_SLOT_MINUTES = 5
MAX_SLOT_MINUTES = 480
#: Maximum length of a booked appointment.
MAX_APPOINTMENT = timedelta(hours=8)
#: Maximum length of the window one FindSlots call searches.
MAX_SLOT_WINDOW = timedelta(days=31)


class AppointmentStatus(StrEnum):
    """State of an appointment, stored by name."""

    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


#: States in which an appointment occupies the practitioner's time.
ACTIVE_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.CHECKED_IN)

#: Allowed transitions: target state -> states it may be reached from.
TRANSITIONS: dict[AppointmentStatus, tuple[AppointmentStatus, ...]] = {
    AppointmentStatus.CHECKED_IN: (AppointmentStatus.BOOKED,),
    AppointmentStatus.COMPLETED: (AppointmentStatus.CHECKED_IN,),
    AppointmentStatus.CANCELLED: (
        AppointmentStatus.BOOKED,
        AppointmentStatus.CHECKED_IN,
    ),
    AppointmentStatus.NO_SHOW: (AppointmentStatus.BOOKED,),
}


class ScheduleExceptionKind(StrEnum):
    LEAVE = "leave"
    HOLIDAY = "holiday"


class AdmissionStatus(StrEnum):
    ADMITTED = "admitted"
    DISCHARGED = "discharged"


def can_transition(current: AppointmentStatus, target: AppointmentStatus) -> bool:
    """Tell whether an appointment in ``current`` may move to ``target``."""
    return current in TRANSITIONS.get(target, ())


@dataclass(frozen=True, order=True)
class Interval:
    """Half-open UTC interval [start, end)."""

    start: datetime
    end: datetime

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: Interval) -> bool:
        return self.start <= other.start and other.end <= self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class WeeklyRule:
    """Working hours on one ISO weekday (1 = Monday), in local wall-clock time."""

    weekday: int
    start: time
    end: time
    slot_minutes: int

    @property
    def slot(self) -> timedelta:
        return timedelta(minutes=self.slot_minutes)


def parse_clock_time(text: str) -> time | None:
    """Parse "HH:MM" (24-hour); return None when it is not one."""
    hours, sep, minutes = text.partition(":")
    if not sep or len(hours) != 2 or len(minutes) != 2:
        return None
    if not (hours.isdigit() and minutes.isdigit()):
        return None
    if int(hours) > 23 or int(minutes) > 59:
        return None
    return time(int(hours), int(minutes))


def load_time_zone(name: str) -> ZoneInfo | None:
    """Return the IANA time zone ``name``, or None when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def overlapping_rules(rules: Sequence[WeeklyRule]) -> list[tuple[int, int]]:
    """Return index pairs of rules on the same weekday whose hours overlap."""
    pairs = []
    for i, first in enumerate(rules):
        for j in range(i + 1, len(rules)):
            second = rules[j]
            if first.weekday != second.weekday:
                continue
            if first.start < second.end and second.start < first.end:
                pairs.append((i, j))
    return pairs


@dataclass(frozen=True)
class WeeklyHours:
    """A practitioner's weekly rules in one time zone."""

    rules: tuple[WeeklyRule, ...]
    time_zone: ZoneInfo

    def working_intervals(
        self, window: Interval
    ) -> Iterator[tuple[Interval, WeeklyRule]]:
        """Yield each rule's hours on the local dates that overlap ``window``."""
        first = window.start.astimezone(self.time_zone).date() - timedelta(days=1)
        last = window.end.astimezone(self.time_zone).date()
        day = first
        while day <= last:
            for rule in self.rules:
                if rule.weekday != day.isoweekday():
                    continue
                hours = self._to_utc(day, rule)
                if hours is not None and hours.overlaps(window):
                    yield hours, rule
            day += timedelta(days=1)

    def _to_utc(self, day: date, rule: WeeklyRule) -> Interval | None:
        start = _local_to_utc(day, rule.start, self.time_zone)
        end = _local_to_utc(day, rule.end, self.time_zone)
        # NOTE: hours that start or end in a daylight-saving gap are skipped
        # for that day; Cairo switches at midnight, outside working hours.
        if start is None or end is None or end <= start:
            return None
        return Interval(start, end)

    def covers(self, period: Interval) -> bool:
        """Tell whether ``period`` lies inside one rule's hours."""
        return any(
            hours.contains(period) for hours, _ in self.working_intervals(period)
        )


def _local_to_utc(day: date, clock: time, zone: ZoneInfo) -> datetime | None:
    local = datetime.combine(day, clock, tzinfo=zone)
    moment = local.astimezone(UTC)
    # A wall-clock time inside a daylight-saving gap does not exist and does
    # not survive the round trip.
    if moment.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None
    return moment


def is_bookable(
    period: Interval, hours: WeeklyHours, unavailable: Iterable[Interval]
) -> bool:
    """Tell whether ``period`` is inside working hours and outside exceptions."""
    if not hours.covers(period):
        return False
    return not any(period.overlaps(blocked) for blocked in unavailable)


def free_slots(
    *,
    hours: WeeklyHours,
    window: Interval,
    unavailable: Sequence[Interval],
    busy: Sequence[Interval],
    not_before: datetime,
) -> list[Interval]:
    """Return the free slots of the weekly grid inside ``window``, in order.

    A slot is free when it starts no earlier than ``not_before`` and overlaps
    neither an exception (``unavailable``) nor an active appointment (``busy``).
    """
    slots = []
    for hours_interval, rule in hours.working_intervals(window):
        start = hours_interval.start
        while start + rule.slot <= hours_interval.end:
            slot = Interval(start, start + rule.slot)
            start += rule.slot
            if slot.start < not_before or not window.contains(slot):
                continue
            if any(slot.overlaps(other) for other in (*unavailable, *busy)):
                continue
            slots.append(slot)
    return sorted(set(slots))


def next_free_period(
    *,
    hours: WeeklyHours,
    duration: timedelta,
    earliest: datetime,
    latest_start: datetime,
    unavailable: Sequence[Interval],
    busy: Sequence[Interval],
) -> Interval | None:
    """Return the first free period of ``duration`` that starts on the slot grid.

    Candidates start at slot boundaries between ``earliest`` and
    ``latest_start``; a candidate longer than one slot must still fit inside
    one rule's hours.
    """
    if latest_start < earliest:
        return None
    window = Interval(earliest, latest_start + duration)
    candidates = []
    for hours_interval, rule in hours.working_intervals(window):
        start = hours_interval.start
        while start + duration <= hours_interval.end:
            candidates.append(Interval(start, start + duration))
            start += rule.slot
    for candidate in sorted(set(candidates)):
        if candidate.start < earliest or candidate.start > latest_start:
            continue
        if any(candidate.overlaps(other) for other in (*unavailable, *busy)):
            continue
        return candidate
    return None


@dataclass(frozen=True)
class AvailabilityPlan:
    """Outcome of an availability change for each displaced appointment."""

    #: appointment id -> new period.
    moves: dict[str, Interval]
    #: Appointment ids with no free period inside the window.
    cancellations: list[str]


def plan_availability_change(
    *,
    affected: Sequence[tuple[str, Interval]],
    hours: WeeklyHours,
    unavailable: Sequence[Interval],
    busy: Sequence[Interval],
    not_before: datetime,
    window: timedelta,
) -> AvailabilityPlan:
    """Move each affected appointment to the next free period, or cancel it.

    ``affected`` pairs appointment ids with their periods, earliest first.
    ``busy`` contains the periods of the practitioner's other active
    appointments. Each move occupies its new period, so later moves cannot
    land on it.
    A move may start at most ``window`` after the original start.
    """
    occupied = list(busy)
    moves: dict[str, Interval] = {}
    cancellations: list[str] = []
    for appointment_id, period in sorted(affected, key=lambda item: item[1]):
        new_period = next_free_period(
            hours=hours,
            duration=period.duration,
            earliest=max(period.start, not_before),
            latest_start=period.start + window,
            unavailable=unavailable,
            busy=occupied,
        )
        if new_period is None:
            cancellations.append(appointment_id)
            continue
        moves[appointment_id] = new_period
        occupied.append(new_period)
    return AvailabilityPlan(moves=moves, cancellations=cancellations)
