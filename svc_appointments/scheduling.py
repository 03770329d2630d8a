"""Scheduling commands: each runs in one transaction and writes its events.

Every public method takes the session of the caller's transaction, which the
servicer opens through ``Database.run``. A method loads and locks what it
changes, applies the rules of ``svc_appointments.domain``, saves the rows and
adds the events to the outbox in that same transaction. A state change and
its events are therefore committed together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import uuid_utils
from sqlmodel import Session

from hin.appointments.v1 import events_pb2
from svc_appointments import store
from svc_appointments.convert import appointment_snapshot, period_message
from svc_appointments.domain import (
    DEFAULT_TIME_ZONE,
    AdmissionStatus,
    AppointmentStatus,
    Interval,
    ScheduleExceptionKind,
    WeeklyHours,
    WeeklyRule,
    can_transition,
    free_slots,
    load_time_zone,
    parse_clock_time,
    plan_availability_change,
)
from svc_appointments.errors import (
    AdmissionNotFound,
    AlreadyAdmitted,
    AppointmentNotFound,
    IdempotencyKeyReused,
    IdentifierInUse,
    InvalidTransition,
    PatientDeceased,
    PatientMerged,
    PatientUnknown,
    PractitionerNotFound,
    ScheduleMissing,
    SlotUnavailable,
    StaleVersion,
)
from svc_appointments.store import (
    AdmissionRow,
    AppointmentRow,
    OrganizationRow,
    PractitionerRow,
    ScheduleExceptionRow,
    ScheduleRow,
)

logger = logging.getLogger(__name__)

#: How far ahead the search for appointments that lost their time looks.
AFFECTED_HORIZON = timedelta(days=366)
#: cancelled_by value of appointments cancelled by an availability change.
AVAILABILITY_CHANGE = "availability-change"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid_utils.uuid7())


@dataclass(frozen=True)
class Idempotency:
    """Operation name, caller's key and a hash of the rest of the request."""

    operation: str
    key: str
    request_hash: str


@dataclass(frozen=True)
class PractitionerInput:
    identifiers: list[dict[str, str]]
    names: list[dict[str, Any]]
    organization_id: str
    specialty: dict[str, str]


@dataclass(frozen=True)
class BookInput:
    patient_id: str
    practitioner_id: str
    period: Interval
    service_type: tuple[str, str, str]
    reason: str
    location_id: str


@dataclass(frozen=True)
class AdmitInput:
    patient_id: str
    organization_id: str
    ward: str
    emergency: bool
    attending_practitioner_id: str
    care_team_practitioner_ids: list[str]
    appointment_id: str
    reason: str


@dataclass
class ScheduleChange:
    """Schedule after a change, and the appointments the change moved."""

    schedule: ScheduleRow
    exceptions: list[ScheduleExceptionRow]
    rescheduled: list[AppointmentRow] = field(default_factory=list)
    cancelled: list[AppointmentRow] = field(default_factory=list)
    exception: ScheduleExceptionRow | None = None


class Scheduler:
    """Run the scheduling commands against one service's tables and outbox."""

    def __init__(
        self,
        *,
        outbox: Any,
        reschedule_window: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._outbox = outbox
        self._reschedule_window = reschedule_window
        self._clock = clock

    # --- practitioners and organizations ------------------------------------

    def register_practitioner(
        self, session: Session, data: PractitionerInput, idempotency: Idempotency | None
    ) -> PractitionerRow:
        """Create a practitioner; an identifier held by another is rejected."""
        previous = _replayed(session, idempotency)
        if previous is not None:
            return _get_practitioner(session, previous)
        for index, identifier in enumerate(data.identifiers):
            holder = store.find_by_identifier(
                session, "Practitioner", identifier["system"], identifier["value"]
            )
            if holder is not None:
                raise IdentifierInUse(
                    f"identifiers[{index}] ({identifier['system']}) is already held "
                    f"by practitioner {holder}; use that practitioner instead",
                    reason="IDENTIFIER_IN_USE",
                    metadata={"practitioner_id": holder},
                )
        now = self._clock()
        row = PractitionerRow(
            id=new_id(),
            identifiers=data.identifiers,
            names=data.names,
            organization_id=data.organization_id,
            specialty=data.specialty,
            created_at=now,
        )
        session.add(row)
        store.add_identifiers(session, "Practitioner", row.id, data.identifiers)
        _remember(session, idempotency, row.id, now)
        session.flush()
        return row

    def register_organization(
        self,
        session: Session,
        *,
        name: str,
        identifiers: list[dict[str, str]],
        time_zone: str,
        idempotency: Idempotency | None,
    ) -> OrganizationRow:
        previous = _replayed(session, idempotency)
        if previous is not None:
            return session.get_one(OrganizationRow, previous)
        for index, identifier in enumerate(identifiers):
            holder = store.find_by_identifier(
                session, "Organization", identifier["system"], identifier["value"]
            )
            if holder is not None:
                raise IdentifierInUse(
                    f"identifiers[{index}] ({identifier['system']}) is already held "
                    f"by organization {holder}; use that organization instead",
                    reason="IDENTIFIER_IN_USE",
                    metadata={"organization_id": holder},
                )
        now = self._clock()
        row = OrganizationRow(
            id=new_id(),
            name=name,
            time_zone=time_zone or DEFAULT_TIME_ZONE,
            identifiers=identifiers,
            created_at=now,
        )
        session.add(row)
        store.add_identifiers(session, "Organization", row.id, identifiers)
        _remember(session, idempotency, row.id, now)
        session.flush()
        return row

    # --- schedules ----------------------------------------------------------

    def set_weekly_schedule(
        self,
        session: Session,
        *,
        practitioner_id: str,
        organization_id: str,
        location_id: str,
        rules: list[dict[str, Any]],
        expected_version: int,
        reason: str,
    ) -> ScheduleChange:
        """Replace the weekly rules; move or cancel bookings outside new hours."""
        practitioner = _lock_practitioner(session, practitioner_id)
        schedule = session.get(ScheduleRow, practitioner_id)
        current_version = schedule.version if schedule is not None else 0
        if expected_version != current_version:
            raise StaleVersion(
                f"schedule of practitioner {practitioner_id} is at version "
                f"{current_version}, not {expected_version}; read it again and "
                "retry with the current version",
                reason="STALE_VERSION",
                metadata={"current_version": str(current_version)},
            )

        organization_id = organization_id or practitioner.organization_id
        now = self._clock()
        time_zone = _time_zone_of(session, organization_id)
        if schedule is None:
            schedule = ScheduleRow(
                practitioner_id=practitioner_id,
                time_zone=time_zone,
                rules=rules,
                version=0,
                updated_at=now,
            )
            session.add(schedule)
        schedule.organization_id = organization_id
        schedule.location_id = location_id
        schedule.time_zone = time_zone
        schedule.rules = rules
        schedule.version += 1
        schedule.updated_at = now
        session.flush()

        change = ScheduleChange(schedule=schedule, exceptions=[])
        if current_version > 0:
            self._apply_availability_change(
                session,
                change,
                unavailable=[],
                reason=reason or "weekly schedule changed",
            )
        change.exceptions = _future_exceptions(session, practitioner_id, now)
        return change

    def add_schedule_exception(
        self,
        session: Session,
        *,
        practitioner_id: str,
        kind: ScheduleExceptionKind,
        period: Interval,
        reason: str,
        idempotency: Idempotency | None,
    ) -> ScheduleChange:
        """Take time out of a schedule; move or cancel the bookings inside it."""
        _lock_practitioner(session, practitioner_id)
        previous = _replayed(session, idempotency)
        if previous is not None:
            exception = session.get_one(ScheduleExceptionRow, previous)
            return self._replay_exception(session, exception)
        schedule = get_schedule(session, practitioner_id)

        change = self._add_exception(
            session, schedule, kind=kind, period=period, reason=reason, holiday_id=""
        )
        assert change.exception is not None
        _remember(session, idempotency, change.exception.id, self._clock())
        return change

    def add_holiday(
        self,
        session: Session,
        *,
        organization_id: str,
        period: Interval,
        reason: str,
        idempotency: Idempotency | None,
    ) -> list[ScheduleChange]:
        """Add a holiday to every schedule of an organization, in one transaction.

        Practitioners are locked in id order, the order every other writer
        that locks several practitioners uses.
        """
        previous = _replayed(session, idempotency)
        if previous is not None:
            return [
                self._replay_exception(session, exception)
                for exception in store.exceptions_of_holiday(session, previous)
            ]
        holiday_id = new_id()
        changes = []
        for schedule in store.schedules_of_organization(session, organization_id):
            _lock_practitioner(session, schedule.practitioner_id)
            session.refresh(schedule)
            changes.append(
                self._add_exception(
                    session,
                    schedule,
                    kind=ScheduleExceptionKind.HOLIDAY,
                    period=period,
                    reason=reason,
                    holiday_id=holiday_id,
                )
            )
        _remember(session, idempotency, holiday_id, self._clock())
        return changes

    def _add_exception(
        self,
        session: Session,
        schedule: ScheduleRow,
        *,
        kind: ScheduleExceptionKind,
        period: Interval,
        reason: str,
        holiday_id: str,
    ) -> ScheduleChange:
        """Save one exception, then move or cancel the bookings it displaces.

        The caller holds the practitioner's row lock.
        """
        now = self._clock()
        exception = ScheduleExceptionRow(
            id=new_id(),
            practitioner_id=schedule.practitioner_id,
            kind=str(kind),
            start_at=period.start,
            end_at=period.end,
            reason=reason,
            holiday_id=holiday_id,
            rescheduled_ids=[],
            cancelled_ids=[],
            created_at=now,
        )
        session.add(exception)
        schedule.version += 1
        schedule.updated_at = now
        session.flush()

        change = ScheduleChange(schedule=schedule, exceptions=[], exception=exception)
        self._apply_availability_change(
            session, change, unavailable=[period], reason=reason or str(kind)
        )
        # Kept so that a retried call returns the appointments this one moved.
        exception.rescheduled_ids = [row.id for row in change.rescheduled]
        exception.cancelled_ids = [row.id for row in change.cancelled]
        change.exceptions = _future_exceptions(session, schedule.practitioner_id, now)
        return change

    def _replay_exception(
        self, session: Session, exception: ScheduleExceptionRow
    ) -> ScheduleChange:
        """Rebuild the result of the call that added ``exception``."""
        return ScheduleChange(
            schedule=session.get_one(ScheduleRow, exception.practitioner_id),
            exceptions=_future_exceptions(
                session, exception.practitioner_id, self._clock()
            ),
            exception=exception,
            rescheduled=[
                session.get_one(AppointmentRow, appointment_id)
                for appointment_id in exception.rescheduled_ids
            ],
            cancelled=[
                session.get_one(AppointmentRow, appointment_id)
                for appointment_id in exception.cancelled_ids
            ],
        )

    def _apply_availability_change(
        self,
        session: Session,
        change: ScheduleChange,
        *,
        unavailable: list[Interval],
        reason: str,
    ) -> None:
        """Move or cancel every future booking that lost its time, and emit events.

        The caller holds the practitioner's row lock, so no booking can slip
        in between the plan and its writes.
        """
        schedule = change.schedule
        now = self._clock()
        hours = _hours(schedule)
        horizon = Interval(now, now + AFFECTED_HORIZON)
        exceptions = [
            Interval(e.start_at, e.end_at)
            for e in store.exceptions_overlapping(
                session,
                schedule.practitioner_id,
                Interval(now, now + AFFECTED_HORIZON + self._reschedule_window),
            )
        ]
        active = store.active_appointments(session, schedule.practitioner_id, horizon)
        affected = [
            row
            for row in active
            if row.status == AppointmentStatus.BOOKED
            and row.start_at >= now
            and not _fits(row.period, hours, exceptions)
        ]
        affected_ids = {row.id for row in affected}
        plan = plan_availability_change(
            affected=[(row.id, row.period) for row in affected],
            hours=hours,
            unavailable=exceptions,
            busy=[row.period for row in active if row.id not in affected_ids],
            not_before=now,
            window=self._reschedule_window,
        )

        for row in affected:
            if row.id in plan.moves:
                previous = row.period
                self._move(row, plan.moves[row.id], now)
                change.rescheduled.append(row)
                self._emit_rescheduled(
                    session, row, previous, row.practitioner_id, reason
                )
            else:
                self._cancel(row, AVAILABILITY_CHANGE, reason, now)
                change.cancelled.append(row)
                self._emit_cancelled(session, row)
        session.flush()

        event = events_pb2.PractitionerAvailabilityChanged(
            practitioner_id=schedule.practitioner_id,
            organization_id=schedule.organization_id,
            unavailable=[period_message(p) for p in unavailable],
            reason=reason,
            affected_appointment_ids=[row.id for row in affected],
        )
        event.context.organization_id = schedule.organization_id
        self._outbox.add(
            session,
            event,
            key=schedule.practitioner_id,
            subject=schedule.practitioner_id,
        )
        logger.info(
            "availability changed",
            extra={
                "practitioner_id": schedule.practitioner_id,
                "rescheduled": len(change.rescheduled),
                "cancelled": len(change.cancelled),
            },
        )

    def find_slots(
        self, session: Session, *, practitioner_id: str, window: Interval
    ) -> tuple[ScheduleRow, list[Interval]]:
        """Return the schedule and the free slots inside ``window``."""
        _get_practitioner(session, practitioner_id)
        schedule = get_schedule(session, practitioner_id)
        exceptions = store.exceptions_overlapping(session, practitioner_id, window)
        active = store.active_appointments(session, practitioner_id, window)
        slots = free_slots(
            hours=_hours(schedule),
            window=window,
            unavailable=[Interval(e.start_at, e.end_at) for e in exceptions],
            busy=[row.period for row in active],
            not_before=self._clock(),
        )
        return schedule, slots

    def future_exceptions(
        self, session: Session, practitioner_id: str
    ) -> list[ScheduleExceptionRow]:
        """Return the practitioner's exceptions that have not ended yet."""
        return _future_exceptions(session, practitioner_id, self._clock())

    # --- appointments -------------------------------------------------------

    def book(
        self, session: Session, data: BookInput, idempotency: Idempotency | None
    ) -> AppointmentRow:
        """Book a free period of a practitioner for a patient."""
        # The lock comes before the replay check: a retry that raced the first
        # call waits for it and then finds its result instead of a taken slot.
        practitioner = _lock_practitioner(session, data.practitioner_id)
        previous = _replayed(session, idempotency)
        if previous is not None:
            return session.get_one(AppointmentRow, previous)
        require_bookable_patient(session, data.patient_id)
        _require_active(practitioner)
        schedule = get_schedule(session, data.practitioner_id)

        now = self._clock()
        self._check_free(
            session, practitioner.id, schedule, data.period, data.patient_id, now
        )
        system, code, display = data.service_type
        row = AppointmentRow(
            id=new_id(),
            patient_id=data.patient_id,
            practitioner_id=practitioner.id,
            organization_id=schedule.organization_id,
            location_id=data.location_id or schedule.location_id,
            start_at=data.period.start,
            end_at=data.period.end,
            service_type_system=system,
            service_type_code=code,
            service_type_display=display,
            reason=data.reason,
            status=str(AppointmentStatus.BOOKED),
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        _remember(session, idempotency, row.id, now)
        session.flush()

        event = events_pb2.AppointmentBooked(appointment=appointment_snapshot(row))
        self._add_event(session, event, row)
        return row

    def reschedule(
        self,
        session: Session,
        *,
        appointment_id: str,
        expected_version: int,
        period: Interval,
        practitioner_id: str,
        reason: str,
    ) -> AppointmentRow:
        """Move a booked appointment to another time or practitioner."""
        # Lock order everywhere: practitioners by id, then appointments. The
        # unlocked read only finds the practitioners to lock, and the version
        # check after the appointment lock detects a change in between.
        unlocked = session.get(AppointmentRow, appointment_id)
        current_practitioner = unlocked.practitioner_id if unlocked else ""
        target_id = practitioner_id or current_practitioner
        for locked_id in sorted({target_id, current_practitioner} - {""}):
            _lock_practitioner(session, locked_id)
        row = _lock_appointment(session, appointment_id, expected_version)
        _require_transition_from(row, AppointmentStatus.BOOKED, "rescheduled")
        if target_id != row.practitioner_id:
            _require_active(_get_practitioner(session, target_id))
        schedule = get_schedule(session, target_id)

        now = self._clock()
        self._check_free(
            session, target_id, schedule, period, row.patient_id, now, exclude_id=row.id
        )
        previous_period, previous_practitioner = row.period, row.practitioner_id
        row.practitioner_id = target_id
        if target_id != previous_practitioner:
            row.organization_id = schedule.organization_id
            row.location_id = schedule.location_id
        self._move(row, period, now)
        session.flush()
        self._emit_rescheduled(
            session, row, previous_period, previous_practitioner, reason
        )
        return row

    def cancel(
        self,
        session: Session,
        *,
        appointment_id: str,
        expected_version: int,
        cancelled_by: str,
        reason: str,
    ) -> AppointmentRow:
        row = _lock_appointment(session, appointment_id, expected_version)
        _require_transition(row, AppointmentStatus.CANCELLED)
        self._cancel(row, cancelled_by, reason, self._clock())
        session.flush()
        self._emit_cancelled(session, row)
        return row

    def check_in(
        self, session: Session, *, appointment_id: str, expected_version: int
    ) -> AppointmentRow:
        row = _lock_appointment(session, appointment_id, expected_version)
        _require_transition(row, AppointmentStatus.CHECKED_IN)
        now = self._clock()
        row.status = str(AppointmentStatus.CHECKED_IN)
        row.checked_in_at = now
        _touch(row, now)
        session.flush()
        event = events_pb2.AppointmentCheckedIn(appointment=appointment_snapshot(row))
        event.checked_in_at.FromDatetime(now)
        self._add_event(session, event, row)
        return row

    def complete(
        self, session: Session, *, appointment_id: str, expected_version: int
    ) -> AppointmentRow:
        """Complete a visit and assign the encounter id records will store."""
        row = _lock_appointment(session, appointment_id, expected_version)
        _require_transition(row, AppointmentStatus.COMPLETED)
        now = self._clock()
        row.status = str(AppointmentStatus.COMPLETED)
        row.completed_at = now
        row.encounter_id = new_id()
        _touch(row, now)
        session.flush()
        event = events_pb2.AppointmentCompleted(
            appointment=appointment_snapshot(row), encounter_id=row.encounter_id
        )
        event.completed_at.FromDatetime(now)
        self._add_event(session, event, row)
        return row

    def mark_no_show(
        self, session: Session, *, appointment_id: str, expected_version: int
    ) -> AppointmentRow:
        row = _lock_appointment(session, appointment_id, expected_version)
        _require_transition(row, AppointmentStatus.NO_SHOW)
        now = self._clock()
        if now < row.start_at:
            raise InvalidTransition(
                f"appointment {row.id} starts at {row.start_at.isoformat()}; a "
                "patient can be marked as not arrived only after the start",
                reason="APPOINTMENT_NOT_STARTED",
            )
        row.status = str(AppointmentStatus.NO_SHOW)
        _touch(row, now)
        session.flush()
        event = events_pb2.AppointmentNoShow(appointment=appointment_snapshot(row))
        self._add_event(session, event, row)
        return row

    def cancel_for_deceased(
        self, session: Session, patient_id: str, *, causation_id: str
    ) -> list[AppointmentRow]:
        """Cancel a deceased patient's future booked appointments.

        Runs in the transaction of the consumer that applied records' event;
        a second run finds nothing left to cancel.
        """
        now = self._clock()
        rows = store.future_booked_appointments(session, patient_id, now)
        for row in rows:
            self._cancel(row, "hospital", "patient recorded as deceased", now)
            session.flush()
            event = events_pb2.AppointmentCancelled(
                appointment=appointment_snapshot(row),
                cancelled_by=row.cancelled_by,
                reason=row.cancellation_reason,
            )
            event.context.causation_id = causation_id
            self._add_event(session, event, row)
        if rows:
            logger.info(
                "appointments of deceased patient cancelled",
                extra={"patient_id": patient_id, "cancelled": len(rows)},
            )
        return rows

    def _check_free(
        self,
        session: Session,
        practitioner_id: str,
        schedule: ScheduleRow,
        period: Interval,
        patient_id: str,
        now: datetime,
        *,
        exclude_id: str = "",
    ) -> None:
        """Raise SlotUnavailable unless ``period`` is free for both people."""
        if period.start < now:
            raise SlotUnavailable(
                f"period starts at {period.start.isoformat()}, which is in the "
                "past; choose a future slot (FindSlots lists them)",
                reason="PERIOD_IN_PAST",
            )
        if not _hours(schedule).covers(period):
            raise SlotUnavailable(
                f"period {_describe(period)} is outside the working hours of "
                f"practitioner {practitioner_id}; FindSlots lists bookable times",
                reason="OUTSIDE_WORKING_HOURS",
            )
        if store.exceptions_overlapping(session, practitioner_id, period):
            raise SlotUnavailable(
                f"practitioner {practitioner_id} is on leave or holiday during "
                f"{_describe(period)}; FindSlots lists bookable times",
                reason="PRACTITIONER_UNAVAILABLE",
            )
        if store.active_appointments(
            session, practitioner_id, period, exclude_id=exclude_id
        ):
            raise SlotUnavailable(
                f"practitioner {practitioner_id} already has an appointment "
                f"overlapping {_describe(period)}; choose another slot",
                reason="SLOT_UNAVAILABLE",
            )
        # NOTE: only the practitioner is locked, so two concurrent bookings of
        # one patient with two practitioners can both pass this check.
        if store.patient_appointments_overlapping(
            session, patient_id, period, exclude_id=exclude_id
        ):
            raise SlotUnavailable(
                f"patient {patient_id} already has an appointment overlapping "
                f"{_describe(period)}; cancel or move it first",
                reason="PATIENT_ALREADY_BOOKED",
            )

    def _move(self, row: AppointmentRow, period: Interval, now: datetime) -> None:
        row.start_at = period.start
        row.end_at = period.end
        _touch(row, now)

    def _cancel(
        self, row: AppointmentRow, cancelled_by: str, reason: str, now: datetime
    ) -> None:
        row.status = str(AppointmentStatus.CANCELLED)
        row.cancelled_by = cancelled_by
        row.cancellation_reason = reason
        _touch(row, now)

    def _emit_rescheduled(
        self,
        session: Session,
        row: AppointmentRow,
        previous_period: Interval,
        previous_practitioner_id: str,
        reason: str,
    ) -> None:
        event = events_pb2.AppointmentRescheduled(
            appointment=appointment_snapshot(row),
            previous_period=period_message(previous_period),
            previous_practitioner_id=previous_practitioner_id,
            reason=reason,
        )
        self._add_event(session, event, row)

    def _emit_cancelled(self, session: Session, row: AppointmentRow) -> None:
        event = events_pb2.AppointmentCancelled(
            appointment=appointment_snapshot(row),
            cancelled_by=row.cancelled_by,
            reason=row.cancellation_reason,
        )
        self._add_event(session, event, row)

    def _add_event(self, session: Session, event: Any, row: AppointmentRow) -> None:
        event.context.organization_id = row.organization_id
        self._outbox.add(session, event, key=row.patient_id, subject=row.id)

    # --- admissions ---------------------------------------------------------

    def admit(
        self, session: Session, data: AdmitInput, idempotency: Idempotency | None
    ) -> AdmissionRow:
        """Admit a patient; an emergency admission needs no appointment."""
        previous = _replayed(session, idempotency)
        if previous is not None:
            return session.get_one(AdmissionRow, previous)
        require_bookable_patient(session, data.patient_id)
        current = store.open_admission(session, data.patient_id)
        if current is not None:
            raise AlreadyAdmitted(
                f"patient {data.patient_id} is already admitted under admission "
                f"{current.id}; discharge it first",
                reason="ALREADY_ADMITTED",
                metadata={"admission_id": current.id},
            )
        team = [data.attending_practitioner_id, *data.care_team_practitioner_ids]
        for practitioner_id in filter(None, team):
            _get_practitioner(session, practitioner_id)
        if data.appointment_id:
            _check_admitting_appointment(session, data.appointment_id, data.patient_id)

        now = self._clock()
        row = AdmissionRow(
            id=new_id(),
            patient_id=data.patient_id,
            organization_id=data.organization_id,
            ward=data.ward,
            emergency=data.emergency,
            attending_practitioner_id=data.attending_practitioner_id,
            care_team_practitioner_ids=list(data.care_team_practitioner_ids),
            appointment_id=data.appointment_id,
            reason=data.reason,
            status=str(AdmissionStatus.ADMITTED),
            admitted_at=now,
        )
        session.add(row)
        _remember(session, idempotency, row.id, now)
        session.flush()

        event = events_pb2.PatientAdmitted(
            admission_id=row.id,
            patient_id=row.patient_id,
            organization_id=row.organization_id,
            ward=row.ward,
            emergency=row.emergency,
            attending_practitioner_id=row.attending_practitioner_id,
            care_team_practitioner_ids=row.care_team_practitioner_ids,
            reason=row.reason,
        )
        event.admitted_at.FromDatetime(now)
        event.context.organization_id = row.organization_id
        self._outbox.add(session, event, key=row.patient_id, subject=row.id)
        return row

    def discharge(
        self, session: Session, *, admission_id: str, expected_version: int
    ) -> AdmissionRow:
        row = store.lock_admission(session, admission_id)
        if row is None:
            raise AdmissionNotFound(
                f"admission {admission_id} not found", reason="ADMISSION_NOT_FOUND"
            )
        _check_version("admission", row.id, row.version, expected_version)
        if row.status != AdmissionStatus.ADMITTED:
            raise InvalidTransition(
                f"admission {row.id} is {row.status}, not admitted; there is "
                "nothing to discharge",
                reason="ADMISSION_NOT_OPEN",
            )
        now = self._clock()
        row.status = str(AdmissionStatus.DISCHARGED)
        row.discharged_at = now
        row.version += 1
        session.flush()

        event = events_pb2.PatientDischarged(
            admission_id=row.id,
            patient_id=row.patient_id,
            organization_id=row.organization_id,
        )
        event.discharged_at.FromDatetime(now)
        event.context.organization_id = row.organization_id
        self._outbox.add(session, event, key=row.patient_id, subject=row.id)
        return row


# --- rules that read the store ---------------------------------------------


def require_bookable_patient(session: Session, patient_id: str) -> None:
    """Raise unless records announced the patient, alive and not merged away."""
    patient = session.get(store.PatientSnapshotRow, patient_id)
    if patient is None:
        raise PatientUnknown(
            f"patient {patient_id} is not known to scheduling; register the "
            "patient in records first (scheduling learns of patients from "
            "records' PatientRegistered events)",
            reason="PATIENT_UNKNOWN",
            metadata={"patient_id": patient_id},
        )
    if patient.merged_into:
        survivor = _survivor(session, patient)
        raise PatientMerged(
            f"patient {patient_id} was merged into patient {survivor}; book for "
            f"patient {survivor} instead",
            reason="PATIENT_MERGED",
            metadata={"patient_id": patient_id, "surviving_patient_id": survivor},
        )
    if patient.deceased:
        raise PatientDeceased(
            f"patient {patient_id} is recorded as deceased",
            reason="PATIENT_DECEASED",
            metadata={"patient_id": patient_id},
        )


def _survivor(session: Session, patient: store.PatientSnapshotRow) -> str:
    """Follow the merge links to the surviving patient id (cycles stop)."""
    seen = {patient.patient_id}
    survivor = patient.merged_into
    while survivor and survivor not in seen:
        seen.add(survivor)
        row = session.get(store.PatientSnapshotRow, survivor)
        if row is None or not row.merged_into:
            break
        survivor = row.merged_into
    return survivor


def _check_admitting_appointment(
    session: Session, appointment_id: str, patient_id: str
) -> None:
    appointment = session.get(AppointmentRow, appointment_id)
    if appointment is None:
        raise AppointmentNotFound(
            f"appointment {appointment_id} not found; an elective admission "
            "names an existing appointment or none",
            reason="APPOINTMENT_NOT_FOUND",
        )
    if appointment.patient_id != patient_id:
        raise InvalidTransition(
            f"appointment {appointment_id} belongs to another patient than "
            f"{patient_id}",
            reason="APPOINTMENT_OF_OTHER_PATIENT",
        )
    if appointment.status in (AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW):
        raise InvalidTransition(
            f"appointment {appointment_id} is {appointment.status}; an admission "
            "can follow only a booked, checked-in or completed appointment",
            reason="APPOINTMENT_NOT_ADMITTABLE",
        )


def rules_from_rows(rules: Sequence[dict[str, Any]]) -> tuple[WeeklyRule, ...]:
    parsed = []
    for rule in rules:
        start = parse_clock_time(rule["start"])
        end = parse_clock_time(rule["end"])
        if start is None or end is None:
            raise ValueError(f"stored weekly rule {rule!r} has an invalid time")
        parsed.append(WeeklyRule(rule["weekday"], start, end, rule["slot_minutes"]))
    return tuple(parsed)


def _hours(schedule: ScheduleRow) -> WeeklyHours:
    zone = load_time_zone(schedule.time_zone)
    if zone is None:
        raise ValueError(
            f"schedule of practitioner {schedule.practitioner_id} names unknown "
            f"time zone {schedule.time_zone!r}"
        )
    return WeeklyHours(rules=rules_from_rows(schedule.rules), time_zone=zone)


def _fits(period: Interval, hours: WeeklyHours, exceptions: Sequence[Interval]) -> bool:
    return hours.covers(period) and not any(period.overlaps(e) for e in exceptions)


def _time_zone_of(session: Session, organization_id: str) -> str:
    organization = (
        session.get(OrganizationRow, organization_id) if organization_id else None
    )
    return organization.time_zone if organization is not None else DEFAULT_TIME_ZONE


def _future_exceptions(
    session: Session, practitioner_id: str, now: datetime
) -> list[ScheduleExceptionRow]:
    return store.exceptions_overlapping(
        session, practitioner_id, Interval(now, now + AFFECTED_HORIZON)
    )


def _get_practitioner(session: Session, practitioner_id: str) -> PractitionerRow:
    row = session.get(PractitionerRow, practitioner_id)
    if row is None:
        raise PractitionerNotFound(
            f"practitioner {practitioner_id} not found; register it or import it "
            "from FHIR first",
            reason="PRACTITIONER_NOT_FOUND",
            metadata={"practitioner_id": practitioner_id},
        )
    return row


def _require_active(practitioner: PractitionerRow) -> None:
    if not practitioner.active:
        raise InvalidTransition(
            f"practitioner {practitioner.id} is not active and takes no "
            "appointments; choose another practitioner",
            reason="PRACTITIONER_INACTIVE",
            metadata={"practitioner_id": practitioner.id},
        )


def _lock_practitioner(session: Session, practitioner_id: str) -> PractitionerRow:
    row = store.lock_practitioner(session, practitioner_id)
    if row is None:
        return _get_practitioner(session, practitioner_id)
    return row


def get_schedule(session: Session, practitioner_id: str) -> ScheduleRow:
    schedule = session.get(ScheduleRow, practitioner_id)
    if schedule is None:
        raise ScheduleMissing(
            f"practitioner {practitioner_id} has no weekly schedule; set one with "
            "SetWeeklySchedule first",
            reason="SCHEDULE_MISSING",
            metadata={"practitioner_id": practitioner_id},
        )
    return schedule


def _lock_appointment(
    session: Session, appointment_id: str, expected_version: int
) -> AppointmentRow:
    row = store.lock_appointment(session, appointment_id)
    if row is None:
        raise AppointmentNotFound(
            f"appointment {appointment_id} not found", reason="APPOINTMENT_NOT_FOUND"
        )
    _check_version("appointment", row.id, row.version, expected_version)
    return row


def _check_version(kind: str, row_id: str, current: int, expected: int) -> None:
    if current != expected:
        raise StaleVersion(
            f"{kind} {row_id} is at version {current}, not {expected}; read it "
            "again and retry with the current version",
            reason="STALE_VERSION",
            metadata={"current_version": str(current)},
        )


def _require_transition(row: AppointmentRow, target: AppointmentStatus) -> None:
    if not can_transition(AppointmentStatus(row.status), target):
        raise InvalidTransition(
            f"appointment {row.id} is {row.status}; it cannot become {target}",
            reason="INVALID_APPOINTMENT_STATUS",
            metadata={"status": row.status},
        )


def _require_transition_from(
    row: AppointmentRow, required: AppointmentStatus, verb: str
) -> None:
    if row.status != required:
        raise InvalidTransition(
            f"appointment {row.id} is {row.status}; only a {required} "
            f"appointment can be {verb}",
            reason="INVALID_APPOINTMENT_STATUS",
            metadata={"status": row.status},
        )


def _touch(row: AppointmentRow, now: datetime) -> None:
    row.version += 1
    row.updated_at = now


def _describe(period: Interval) -> str:
    return f"{period.start.isoformat()}/{period.end.isoformat()}"


def _replayed(session: Session, idempotency: Idempotency | None) -> str | None:
    """Return the first result's id of a retried call, or None for a new one."""
    if idempotency is None:
        return None
    previous = store.find_idempotent_result(
        session, idempotency.operation, idempotency.key
    )
    if previous is None:
        return None
    if previous.request_hash != idempotency.request_hash:
        raise IdempotencyKeyReused(
            f"idempotency_key {idempotency.key!r} was used for a different "
            f"{idempotency.operation} request; use a new key for a new request",
            reason="IDEMPOTENCY_KEY_REUSED",
        )
    return previous.result_id


def _remember(
    session: Session, idempotency: Idempotency | None, result_id: str, now: datetime
) -> None:
    if idempotency is None:
        return
    store.remember_idempotent_result(
        session,
        operation=idempotency.operation,
        key=idempotency.key,
        request_hash=idempotency.request_hash,
        result_id=result_id,
        now=now,
    )
