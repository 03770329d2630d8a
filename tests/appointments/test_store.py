"""Store queries and UTC timestamps, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from mesh.runtime.storage import Database
from svc_appointments import store
from svc_appointments.domain import Interval
from svc_appointments.store import AppointmentRow

START = datetime(2030, 1, 7, 7, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate("svc_appointments:migrations")
    yield database
    database.dispose()


def appointment(
    appointment_id: str, start: datetime, minutes: int, status: str = "booked"
) -> AppointmentRow:
    return AppointmentRow(
        id=appointment_id,
        patient_id=f"patient-{appointment_id}",
        practitioner_id="prac-1",
        start_at=start,
        end_at=start + timedelta(minutes=minutes),
        status=status,
        created_at=START,
        updated_at=START,
    )


def test_timestamps_read_back_as_utc(db: Database) -> None:
    cairo_time = datetime(2030, 1, 7, 9, 0, tzinfo=ZoneInfo("Africa/Cairo"))
    with db.transaction() as session:
        session.add(appointment("a-1", cairo_time, 15))

    with Session(db.engine) as session:
        row = session.get(AppointmentRow, "a-1")
        assert row is not None
        # 09:00 in Cairo in January (UTC+2) is 07:00 UTC.
        assert row.start_at == START
        assert row.start_at.tzinfo == UTC


def test_active_appointments_use_half_open_periods(db: Database) -> None:
    with db.transaction() as session:
        session.add(appointment("before", START - timedelta(minutes=15), 15))
        session.add(appointment("inside", START + timedelta(minutes=5), 5))
        session.add(appointment("after", START + timedelta(minutes=15), 15))
        session.add(appointment("cancelled", START, 15, status="cancelled"))
        session.add(
            appointment("checked-in", START + timedelta(minutes=10), 15, "checked_in")
        )

    with db.transaction() as session:
        rows = store.active_appointments(
            session, "prac-1", Interval(START, START + timedelta(minutes=15))
        )

    # Touching periods do not overlap, and cancelled ones hold no time.
    assert [row.id for row in rows] == ["inside", "checked-in"]


def test_identifier_holders_found_in_bulk(db: Database) -> None:
    with db.transaction() as session:
        store.add_identifiers(
            session,
            "Practitioner",
            "prac-1",
            [{"system": "urn:npi", "value": "1"}, {"system": "urn:npi", "value": "2"}],
        )

    with db.transaction() as session:
        holders = store.identifier_holders(
            session,
            {
                ("Practitioner", "urn:npi", "1"),
                ("Practitioner", "urn:npi", "3"),
                ("Organization", "urn:npi", "2"),
            },
        )

    assert holders == {("Practitioner", "urn:npi", "1"): "prac-1"}
