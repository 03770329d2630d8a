"""Patient snapshot handlers: ordering, merges and poison events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from hin.records.v1 import events_pb2 as records_events
from mesh.runtime.storage import Database
from svc_appointments.handlers import (
    PatientEventInvalid,
    on_patient_record_updated,
    on_patient_registered,
    on_patients_merged,
)
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
    from datetime import UTC, datetime

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
