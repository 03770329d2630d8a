"""Patient snapshot handlers: ordering, merges and poison events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlmodel import Session

from hin.appointments.v1 import events_pb2
from hin.records.v1 import events_pb2 as records_events
from mesh.runtime.events import Envelope, Outbox, outbox_table
from mesh.runtime.storage import Database
from svc_appointments.handlers import (
    PatientEventInvalid,
    on_patient_record_updated,
    on_patient_registered,
    on_patients_merged,
    patient_handlers,
)
from svc_appointments.scheduling import Scheduler
from svc_appointments.store import AppointmentRow, PatientSnapshotRow, metadata


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'handlers.db'}")
    database.create_all(metadata)
    yield database
    database.dispose()


def snapshot(
    patient_id: str, version: int, deceased: bool = False
) -> records_events.PatientSnapshot:
    return records_events.PatientSnapshot(
        patient_id=patient_id, version=version, deceased=deceased
    )


def test_older_update_changes_nothing(db: Database) -> None:
    with db.transaction() as session:
        on_patient_registered(
            session,
            records_events.PatientRegistered(patient=snapshot("p-1", 3, True)),
            None,  # type: ignore[arg-type]
        )
        on_patient_record_updated(
            session,
            records_events.PatientRecordUpdated(patient=snapshot("p-1", 2, False)),
            None,  # type: ignore[arg-type]
        )

    with Session(db.engine) as session:
        row = session.get(PatientSnapshotRow, "p-1")
        assert row is not None
        assert row.version == 3
        assert row.deceased is True


def test_merge_links_and_moves_appointments(db: Database) -> None:
    now = datetime.now(UTC)
    with db.transaction() as session:
        session.add(
            AppointmentRow(
                id="a-1",
                patient_id="p-dup",
                start_at=now,
                end_at=now,
                status="booked",
                created_at=now,
                updated_at=now,
            )
        )
        event = records_events.PatientsMerged(
            merged_patient_id="p-dup",
            surviving_patient_id="p-main",
            survivor=snapshot("p-main", 4),
        )
        on_patients_merged(session, event, None)  # type: ignore[arg-type]
        # Redelivery of the same event is harmless.
        on_patients_merged(session, event, None)  # type: ignore[arg-type]

    with Session(db.engine) as session:
        merged = session.get(PatientSnapshotRow, "p-dup")
        survivor = session.get(PatientSnapshotRow, "p-main")
        appointment = session.get(AppointmentRow, "a-1")
        assert merged is not None and merged.merged_into == "p-main"
        assert survivor is not None and survivor.version == 4
        assert appointment is not None and appointment.patient_id == "p-main"


def test_merge_without_ids_raises(db: Database) -> None:
    with db.transaction() as session, pytest.raises(PatientEventInvalid):
        on_patients_merged(
            session,
            records_events.PatientsMerged(surviving_patient_id="p-main"),
            None,  # type: ignore[arg-type]
        )


def test_registered_without_id_raises(db: Database) -> None:
    with db.transaction() as session, pytest.raises(PatientEventInvalid):
        on_patient_registered(
            session,
            records_events.PatientRegistered(),
            None,  # type: ignore[arg-type]
        )


def test_deceased_patient_bookings_cancelled(db: Database) -> None:
    now = datetime(2030, 1, 6, 8, tzinfo=UTC)
    scheduler = Scheduler(
        outbox=Outbox(service="appointments"),
        reschedule_window=timedelta(days=14),
        clock=lambda: now,
    )
    with db.transaction() as session:
        for appointment_id, start in (
            ("a-past", now - timedelta(days=1)),
            ("a-future", now + timedelta(days=1)),
        ):
            session.add(
                AppointmentRow(
                    id=appointment_id,
                    patient_id="p-late",
                    start_at=start,
                    end_at=start + timedelta(minutes=15),
                    status="booked",
                    created_at=now,
                    updated_at=now,
                )
            )
    handler = {h.type_name: h for h in patient_handlers(scheduler)}[
        "hin.records.v1.PatientRecordUpdated"
    ]
    envelope = Envelope(
        id="event-1",
        source="hin://records",
        type="hin.records.v1.PatientRecordUpdated",
        time=now,
        subject="p-late",
        topic="hin.records.events.v1",
        partition=0,
        offset=0,
        key="p-late",
    )
    event = records_events.PatientRecordUpdated(patient=snapshot("p-late", 2, True))

    with db.transaction() as session:
        handler.fn(session, event, envelope)
    with db.transaction() as session:
        handler.fn(session, event, envelope)

    with Session(db.engine) as session:
        future = session.get(AppointmentRow, "a-future")
        past = session.get(AppointmentRow, "a-past")
        cancelled = session.execute(
            select(outbox_table.c.subject, outbox_table.c.payload).where(
                outbox_table.c.event_type == "hin.appointments.v1.AppointmentCancelled"
            )
        ).all()
        assert future is not None and future.status == "cancelled"
        assert past is not None and past.status == "booked"
        # The second delivery found nothing left to cancel.
        assert [row.subject for row in cancelled] == ["a-future"]
        payload = events_pb2.AppointmentCancelled.FromString(cancelled[0].payload)
        assert payload.context.causation_id == "event-1"
