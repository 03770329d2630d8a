"""Storage of svc_notify on SQLite and PostgreSQL: schema, streams, escalation."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from hin.common.v1 import types_pb2 as common
from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import Outbox, outbox_table
from mesh.runtime.storage import Database
from svc_notify import escalation, store
from svc_notify.escalation import EscalationScanner
from svc_notify.feed import Wakeups
from svc_notify.tables import (
    CriticalAlertRow,
    IntentRow,
    NotificationRow,
    NotifyBase,
    RosterRow,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def db(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_database: Callable[[], str],
) -> Iterator[Database]:
    """Notify database migrated to the newest revision."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'notify.db'}"
    else:
        url = postgres_database()
    database = Database(url)
    database.migrate("svc_notify:migrations")
    yield database
    database.dispose()


def test_migration_matches_models(db: Database) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, NotifyBase.metadata)
    assert differences == []


def test_sequence_ids_count_per_recipient(db: Database) -> None:
    with db.transaction() as session:
        first = [store.next_sequence_id(session, "patient:a") for _ in range(3)]
        other = store.next_sequence_id(session, "patient:b")
    with db.transaction() as session:
        later = store.next_sequence_id(session, "patient:a")
    assert first == [1, 2, 3]
    assert other == 1
    assert later == 4


def test_delivery_logged_once_per_channel(db: Database) -> None:
    notification = NotificationRow(
        notification_id=str(uuid.uuid4()),
        recipient="patient:a",
        sequence_id=1,
        kind=pb.NOTIFICATION_KIND_TEST_RESULT,
        priority=pb.NOTIFICATION_PRIORITY_NORMAL,
        language="en",
        title="t",
        summary="s",
        body="b",
        source_event_id="event-1",
        source_event_type="hin.labs.v1.TestResultPublished",
        created_at=T0,
    )
    with db.transaction() as session:
        session.add(notification)
        outcomes = [
            store.add_delivery(
                session,
                notification=notification,
                channel=channel,
                status=pb.DELIVERY_STATUS_PENDING,
                now=T0,
            )
            is not None
            for channel in (
                events.CHANNEL_EMAIL,
                events.CHANNEL_EMAIL,
                events.CHANNEL_SMS,
            )
        ]
    assert outcomes == [True, False, True]


def test_intents_deduplicated_per_recipient(db: Database) -> None:
    intent = store.NewIntent(
        recipient="patient:a",
        kind=pb.NOTIFICATION_KIND_TEST_RESULT,
        priority=pb.NOTIFICATION_PRIORITY_NORMAL,
        patient_id="a",
        organization_id="org",
        attributes={},
    )
    with db.transaction() as session:
        counts = [
            store.add_intents(
                session,
                source_event_id="event-1",
                source_event_type="t",
                intents=[intent],
                now=T0,
            )
            for _ in range(2)
        ]
    assert counts == [1, 0]


def test_merged_patient_resolves_to_survivor(db: Database) -> None:
    survivor = records.PatientSnapshot(
        patient_id="pat-survivor",
        version=3,
        telecom=[
            common.ContactPoint(system="phone", value="+20222222222", use="home"),
            common.ContactPoint(system="phone", value="+201001111111", use="mobile"),
            common.ContactPoint(system="email", value="survivor@example.org"),
        ],
    )
    with db.transaction() as session:
        store.save_patient(session, survivor, T0)
        store.merge_patient(session, "pat-old", "pat-survivor", T0)
    with db.transaction() as session:
        resolved = store.resolve_patient(session, "pat-old")
        contact = store.load_patient(session, "pat-survivor")
        assert contact is not None
        phone, email = contact.phone, contact.email
    assert resolved == "pat-survivor"
    assert phone == "+201001111111"
    assert email == "survivor@example.org"


def test_older_snapshot_does_not_overwrite(db: Database) -> None:
    newer = records.PatientSnapshot(
        patient_id="pat-1",
        version=5,
        telecom=[common.ContactPoint(system="email", value="new@example.org")],
    )
    older = records.PatientSnapshot(
        patient_id="pat-1",
        version=4,
        telecom=[common.ContactPoint(system="email", value="old@example.org")],
    )
    with db.transaction() as session:
        store.save_patient(session, newer, T0)
        store.save_patient(session, older, T0)
    with db.transaction() as session:
        contact = store.load_patient(session, "pat-1")
        assert contact is not None
        assert contact.email == "new@example.org"


def critical_result(result_id: str, ordering: str = "p-order") -> labs.TestResult:
    result = labs.TestResult(
        result_id=result_id,
        patient_id="pat-1",
        test=common.Coding(
            system="http://loinc.org", code="2823-3", display="Potassium"
        ),
        value=labs.ResultValue(quantity="6.9", unit="mmol/L"),
        interpretation=labs.INTERPRETATION_CRITICAL_HIGH,
        status=labs.RESULT_STATUS_FINAL,
        critical=True,
        ordering_practitioner_id=ordering,
        version=1,
    )
    return result


def open_alert(db: Database, result: labs.TestResult, outbox: Outbox) -> str:
    with db.transaction() as session:
        alert = escalation.open_alert(
            session,
            outbox=outbox,
            result=result,
            patient_id=result.patient_id,
            organization_id="org-1",
            source_event_id="event-1",
            now=T0,
            delay=timedelta(seconds=300),
        )
        assert alert is not None
        session.add(
            RosterRow(
                organization_id="org-1",
                department="",
                on_call_practitioner_ids=store.dump_json(["p-order", "p-next"]),
                department_head_practitioner_id="p-head",
                updated_at=T0,
            )
        )
        return alert.alert_id


def escalated_events(db: Database) -> list[events.CriticalAlertEscalated]:
    with db.engine.connect() as connection:
        payloads = connection.execute(
            select(outbox_table.c.payload)
            .where(outbox_table.c.event_type == "hin.notify.v1.CriticalAlertEscalated")
            .order_by(outbox_table.c.seq)
        ).scalars()
        return [events.CriticalAlertEscalated.FromString(p) for p in payloads]


async def test_escalation_survives_restart(db: Database) -> None:
    outbox = Outbox(service="notify")
    alert_id = open_alert(db, critical_result("res-restart"), outbox)
    now = T0

    def scanner() -> EscalationScanner:
        # A new scanner per step stands for a restarted process: all it has is
        # what the database holds.
        return EscalationScanner(
            db=db,
            outbox=outbox,
            delay=timedelta(seconds=300),
            poll_seconds=1.0,
            wakeups=Wakeups(),
            clock=lambda: now,
        )

    now = T0 + timedelta(seconds=299)
    early = await scanner().escalate_due()
    now = T0 + timedelta(seconds=300)
    first = await scanner().escalate_due()
    now = T0 + timedelta(seconds=600)
    second = await scanner().escalate_due()
    now = T0 + timedelta(seconds=900)
    third = await scanner().escalate_due()

    assert [early, first, second, third] == [0, 1, 1, 1]
    assert [(e.level, e.recipient) for e in escalated_events(db)] == [
        (0, "practitioner:p-order"),
        (1, "practitioner:p-next"),
        (2, "practitioner:p-head"),
    ]
    with db.transaction() as session:
        alert = session.get(CriticalAlertRow, alert_id)
        assert alert is not None
        assert alert.status == store.ALERT_EXHAUSTED
        intents = session.exec(
            store.select(IntentRow.recipient).order_by(IntentRow.id)
        ).all()
    assert list(intents) == ["practitioner:p-next", "practitioner:p-head"]


async def test_acknowledged_alert_not_escalated(db: Database) -> None:
    outbox = Outbox(service="notify")
    open_alert(db, critical_result("res-ack"), outbox)
    with db.transaction() as session:
        closed = escalation.acknowledge(
            session,
            result_id="res-ack",
            acknowledged_by="practitioner:p-order",
            acknowledged_at=T0 + timedelta(seconds=10),
        )
    scanner = EscalationScanner(
        db=db,
        outbox=outbox,
        delay=timedelta(seconds=300),
        poll_seconds=1.0,
        wakeups=Wakeups(),
        clock=lambda: T0 + timedelta(seconds=3600),
    )

    stepped = await scanner.escalate_due()

    assert closed == 1
    assert stepped == 0
    assert [e.level for e in escalated_events(db)] == [0]


async def test_alert_without_ordering_clinician_escalates_at_once(
    db: Database,
) -> None:
    outbox = Outbox(service="notify")
    open_alert(db, critical_result("res-orphan", ordering=""), outbox)
    scanner = EscalationScanner(
        db=db,
        outbox=outbox,
        delay=timedelta(seconds=300),
        poll_seconds=1.0,
        wakeups=Wakeups(),
        clock=lambda: T0,
    )

    stepped = await scanner.escalate_due()

    assert stepped == 1
    assert [(e.level, e.recipient) for e in escalated_events(db)] == [
        (1, "practitioner:p-order"),
    ]
