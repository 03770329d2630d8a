"""Scheduling rules: weekly hours in Cairo time, slots and availability plans."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from svc_appointments.domain import (
    AppointmentStatus,
    Interval,
    WeeklyHours,
    WeeklyRule,
    can_transition,
    free_slots,
    next_free_period,
    overlapping_rules,
    parse_clock_time,
    plan_availability_change,
)

CAIRO = ZoneInfo("Africa/Cairo")
# Monday 2025-01-06 (winter, UTC+2) and Monday 2025-07-07 (summer time, UTC+3):
# Egypt observes daylight saving time again since 2023.
WINTER_MONDAY = datetime(2025, 1, 6, tzinfo=UTC)
SUMMER_MONDAY = datetime(2025, 7, 7, tzinfo=UTC)
MONDAY_MORNING = WeeklyHours(
    rules=(WeeklyRule(1, time(9, 0), time(10, 0), 15),), time_zone=CAIRO
)


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def day_of(moment: datetime) -> Interval:
    return Interval(moment, moment + timedelta(days=1))


def test_hours_follow_cairo_winter_offset() -> None:
    intervals = [i for i, _ in MONDAY_MORNING.working_intervals(day_of(WINTER_MONDAY))]

    assert intervals == [Interval(utc(2025, 1, 6, 7), utc(2025, 1, 6, 8))]


def test_hours_follow_cairo_summer_offset() -> None:
    intervals = [i for i, _ in MONDAY_MORNING.working_intervals(day_of(SUMMER_MONDAY))]

    assert intervals == [Interval(utc(2025, 7, 7, 6), utc(2025, 7, 7, 7))]


def test_free_slots_skip_busy_and_leave() -> None:
    slots = free_slots(
        hours=MONDAY_MORNING,
        window=day_of(WINTER_MONDAY),
        unavailable=[Interval(utc(2025, 1, 6, 7, 45), utc(2025, 1, 6, 9))],
        busy=[Interval(utc(2025, 1, 6, 7, 10), utc(2025, 1, 6, 7, 25))],
        not_before=utc(2025, 1, 1, 0),
    )

    # 07:00-08:00 UTC in quarters; 07:00-07:30 overlap the busy 07:10-07:25,
    # 07:45 is on leave, which leaves 07:30 only.
    assert slots == [Interval(utc(2025, 1, 6, 7, 30), utc(2025, 1, 6, 7, 45))]


def test_free_slots_exclude_past() -> None:
    slots = free_slots(
        hours=MONDAY_MORNING,
        window=day_of(WINTER_MONDAY),
        unavailable=[],
        busy=[],
        not_before=utc(2025, 1, 6, 7, 20),
    )

    assert [s.start for s in slots] == [utc(2025, 1, 6, 7, 30), utc(2025, 1, 6, 7, 45)]


def test_covers_rejects_period_past_end() -> None:
    assert MONDAY_MORNING.covers(Interval(utc(2025, 1, 6, 7), utc(2025, 1, 6, 7, 15)))
    assert not MONDAY_MORNING.covers(
        Interval(utc(2025, 1, 6, 7, 50), utc(2025, 1, 6, 8, 5))
    )


def test_next_free_period_respects_latest_start() -> None:
    found = next_free_period(
        hours=MONDAY_MORNING,
        duration=timedelta(minutes=15),
        earliest=utc(2025, 1, 6, 7),
        latest_start=utc(2025, 1, 6, 7, 30),
        unavailable=[Interval(utc(2025, 1, 6, 7), utc(2025, 1, 6, 7, 45))],
        busy=[],
    )

    assert found is None


def test_plan_moves_earliest_first_then_cancels() -> None:
    leave = Interval(utc(2025, 1, 6, 0), utc(2025, 1, 7, 0))
    affected = [
        ("late", Interval(utc(2025, 1, 6, 7, 15), utc(2025, 1, 6, 7, 30))),
        ("early", Interval(utc(2025, 1, 6, 7), utc(2025, 1, 6, 7, 15))),
    ]
    # The next Monday has one free quarter left (07:45 UTC).
    busy = [
        Interval(utc(2025, 1, 13, 7), utc(2025, 1, 13, 7, 45)),
    ]

    plan = plan_availability_change(
        affected=affected,
        hours=MONDAY_MORNING,
        unavailable=[leave],
        busy=busy,
        not_before=utc(2025, 1, 1, 0),
        window=timedelta(days=7, hours=1),
    )

    assert plan.moves == {
        "early": Interval(utc(2025, 1, 13, 7, 45), utc(2025, 1, 13, 8))
    }
    assert plan.cancellations == ["late"]


def test_overlapping_rules_found_per_weekday() -> None:
    rules = [
        WeeklyRule(1, time(9), time(12), 15),
        WeeklyRule(2, time(9), time(12), 15),
        WeeklyRule(1, time(11), time(13), 15),
    ]

    assert overlapping_rules(rules) == [(0, 2)]


def test_parse_clock_time_rejects_bad_text() -> None:
    assert parse_clock_time("09:30") == time(9, 30)
    assert parse_clock_time("9:30") is None
    assert parse_clock_time("24:00") is None
    assert parse_clock_time("09-30") is None


def test_transitions_follow_visit_order() -> None:
    assert can_transition(AppointmentStatus.BOOKED, AppointmentStatus.CHECKED_IN)
    assert not can_transition(AppointmentStatus.BOOKED, AppointmentStatus.COMPLETED)
    assert not can_transition(AppointmentStatus.COMPLETED, AppointmentStatus.CANCELLED)
    assert not can_transition(AppointmentStatus.CHECKED_IN, AppointmentStatus.NO_SHOW)
