"""Outbox, inbox and sample store contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from asyncio import CancelledError
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bus_sample import HANDLER, SampleBase, count_notes, effects, write_update
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData, func, select, update

from hin.common.v1 import types_pb2
from hin.records.v1 import events_pb2
from mesh.runtime.events import (
    ConsumerOptions,
    Envelope,
    EventConsumer,
    Handler,
    Outbox,
    add_event_tables,
    apply_event,
    inbox_table,
    outbox_table,
    prune,
)
from mesh.runtime.events.relay import PublisherLock
from mesh.runtime.principal import (
    Principal,
    PrincipalKind,
    reset_principal,
    set_principal,
)
from mesh.runtime.storage import Database

OUTBOX = Outbox(service="sample")


def outbox_rows(db: Database) -> list:
    with db.transaction() as session:
        query = select(outbox_table).order_by(outbox_table.c.seq)
        return list(session.connection().execute(query).all())


def inbox_count(db: Database, group_id: str) -> int:
    with db.transaction() as session:
        query = (
            select(func.count())
            .select_from(inbox_table)
            .where(inbox_table.c.consumer_group == group_id)
        )
        return int(session.connection().scalar(query) or 0)


def envelope_for(event_id: str) -> Envelope:
    return Envelope(
        id=event_id,
        source="hin://sample",
        type="hin.records.v1.PatientRecordUpdated",
        time=None,
        subject="p-1",
        topic="hin.records.events.v1",
        partition=0,
        offset=7,
        key="p-1",
    )


def sample_event(
    patient_id: str = "p-1", version: int = 1
) -> events_pb2.PatientRecordUpdated:
    event = events_pb2.PatientRecordUpdated()
    event.patient.patient_id = patient_id
    event.patient.version = version
    return event


def test_add_event_tables_twice_keeps_one_copy() -> None:
    metadata = MetaData()
    add_event_tables(metadata)
    add_event_tables(metadata)
    assert sorted(metadata.tables) == ["hin_inbox", "hin_outbox"]


def test_sample_metadata_has_event_tables() -> None:
    assert "hin_outbox" in SampleBase.metadata.tables
    assert "hin_inbox" in SampleBase.metadata.tables


def test_outbox_row_commits_with_state(sample_db: Database) -> None:
    with sample_db.transaction() as session:
        event_id = write_update(session, OUTBOX, "p-1", 3)
    rows = outbox_rows(sample_db)
    assert count_notes(sample_db) == 1
    assert len(rows) == 1
    row = rows[0]
    assert row.event_id == event_id
    assert row.topic == "hin.records.events.v1"
    assert row.key == "p-1"
    assert row.subject == "p-1"
    assert row.event_type == "hin.records.v1.PatientRecordUpdated"
    assert row.source == "hin://sample"
    assert row.sent_at is None
    stored = events_pb2.PatientRecordUpdated.FromString(row.payload)
    assert stored.patient.version == 3
    assert stored.context.event_id == event_id


def test_outbox_rollback_leaves_nothing(sample_db: Database) -> None:
    with pytest.raises(RuntimeError, match="domain rule failed"):
        with sample_db.transaction() as session:
            write_update(session, OUTBOX, "p-1", 1)
            raise RuntimeError("domain rule failed")
    assert count_notes(sample_db) == 0
    assert outbox_rows(sample_db) == []


def test_outbox_fills_event_context(sample_db: Database) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    token = set_principal(Principal(subject="dr-7", kind=PrincipalKind.PERSON))
    try:
        with tracer.start_as_current_span("request") as span:
            with sample_db.transaction() as session:
                write_update(session, OUTBOX, "p-1", 1)
    finally:
        reset_principal(token)
    row = outbox_rows(sample_db)[0]
    context = events_pb2.PatientRecordUpdated.FromString(row.payload).context
    span_context = span.get_span_context()
    trace_id = format(span_context.trace_id, "032x")
    span_id = format(span_context.span_id, "016x")
    assert uuid.UUID(context.event_id).version == 7
    assert context.actor == "dr-7"
    assert context.trace_id == trace_id
    assert context.occurred_at.seconds > 0
    flags = f"{int(span_context.trace_flags):02x}"
    assert row.traceparent == f"00-{trace_id}-{span_id}-{flags}"


def test_outbox_keeps_given_context(sample_db: Database) -> None:
    event = sample_event()
    event.context.event_id = "0190b0b0-0000-7000-8000-000000000001"
    event.context.actor = "spiffe://hin.local/svc/records"
    event.context.occurred_at.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    with sample_db.transaction() as session:
        returned = OUTBOX.add(session, event, key="p-1")
    stored = events_pb2.PatientRecordUpdated.FromString(
        outbox_rows(sample_db)[0].payload
    )
    assert returned == "0190b0b0-0000-7000-8000-000000000001"
    assert stored.context.actor == "spiffe://hin.local/svc/records"
    assert stored.context.occurred_at.ToDatetime() == datetime(2026, 1, 2)


def test_outbox_rejects_empty_key(sample_db: Database) -> None:
    with pytest.raises(ValueError, match="outbox key"):
        with sample_db.transaction() as session:
            OUTBOX.add(session, sample_event(), key="")
    assert outbox_rows(sample_db) == []


def test_outbox_rejects_event_without_context(sample_db: Database) -> None:
    with pytest.raises(ValueError, match="EventContext"):
        with sample_db.transaction() as session:
            OUTBOX.add(session, types_pb2.Identifier(value="x"), key="p-1")


def test_outbox_rows_keep_commit_order(sample_db: Database) -> None:
    ids = []
    for version in range(1, 4):
        with sample_db.transaction() as session:
            ids.append(write_update(session, OUTBOX, "p-1", version))
    assert [row.event_id for row in outbox_rows(sample_db)] == ids


def test_commit_wakes_listener_once(sample_db: Database) -> None:
    calls: list[int] = []
    outbox = Outbox(service="sample")
    outbox.subscribe(lambda: calls.append(1))
    with sample_db.transaction() as session:
        write_update(session, outbox, "p-1", 1)
        write_update(session, outbox, "p-2", 1)
    assert calls == [1]


def test_rollback_does_not_wake_listener(sample_db: Database) -> None:
    calls: list[int] = []
    outbox = Outbox(service="sample")
    outbox.subscribe(lambda: calls.append(1))
    with pytest.raises(RuntimeError):
        with sample_db.transaction() as session:
            write_update(session, outbox, "p-1", 1)
            raise RuntimeError("abandon")
    assert calls == []


def test_inbox_applies_event_once(sample_db: Database) -> None:
    envelope = envelope_for("e-1")
    first = apply_event(
        sample_db,
        group_id="g",
        handler=HANDLER,
        event=sample_event(),
        envelope=envelope,
    )
    second = apply_event(
        sample_db,
        group_id="g",
        handler=HANDLER,
        event=sample_event(),
        envelope=envelope,
    )
    assert first is True
    assert second is False
    assert len(effects(sample_db, event_id="e-1")) == 1
    assert inbox_count(sample_db, "g") == 1


def test_inbox_separates_consumer_groups(sample_db: Database) -> None:
    envelope = envelope_for("e-1")
    for group_id in ("hin.billing", "hin.labs"):
        apply_event(
            sample_db,
            group_id=group_id,
            handler=HANDLER,
            event=sample_event(),
            envelope=envelope,
        )
    assert len(effects(sample_db, event_id="e-1")) == 2
    assert inbox_count(sample_db, "hin.billing") == 1
    assert inbox_count(sample_db, "hin.labs") == 1


def test_failing_handler_writes_no_inbox_row(sample_db: Database) -> None:
    def fail_after_write(session, event, envelope) -> None:  # type: ignore[no-untyped-def]
        HANDLER.fn(session, event, envelope)
        raise RuntimeError("handler failed")

    failing = type(HANDLER)(events_pb2.PatientRecordUpdated, fail_after_write)
    with pytest.raises(RuntimeError, match="handler failed"):
        apply_event(
            sample_db,
            group_id="g",
            handler=failing,
            event=sample_event(),
            envelope=envelope_for("e-1"),
        )
    assert effects(sample_db) == []
    assert inbox_count(sample_db, "g") == 0


def test_handler_event_gets_causation_id(sample_db: Database) -> None:
    def forward(session, event, envelope) -> None:  # type: ignore[no-untyped-def]
        OUTBOX.add(session, sample_event("p-9"), key="p-9")

    handler = type(HANDLER)(events_pb2.PatientRecordUpdated, forward)
    apply_event(
        sample_db,
        group_id="g",
        handler=handler,
        event=sample_event(),
        envelope=envelope_for("e-cause"),
    )
    stored = events_pb2.PatientRecordUpdated.FromString(
        outbox_rows(sample_db)[0].payload
    )
    assert stored.context.causation_id == "e-cause"


def test_prune_deletes_only_old_sent_rows(sample_db: Database) -> None:
    for version in range(3):
        with sample_db.transaction() as session:
            write_update(session, OUTBOX, "p-1", version)
    seqs = [row.seq for row in outbox_rows(sample_db)]
    old = datetime.now(UTC) - timedelta(days=40)
    with sample_db.transaction() as session:
        # Row 1: sent long ago. Row 2: sent just now. Row 3: still pending.
        session.connection().execute(
            update(outbox_table)
            .where(outbox_table.c.seq == seqs[0])
            .values(sent_at=old)
        )
        session.connection().execute(
            update(outbox_table)
            .where(outbox_table.c.seq == seqs[1])
            .values(sent_at=datetime.now(UTC))
        )
    deleted = prune(
        sample_db, outbox_retention=timedelta(days=30), inbox_retention=None
    )
    assert deleted == (1, 0)
    assert [row.seq for row in outbox_rows(sample_db)] == seqs[1:]


def test_prune_keeps_everything_without_retention(sample_db: Database) -> None:
    with sample_db.transaction() as session:
        write_update(session, OUTBOX, "p-1", 1)
    with sample_db.transaction() as session:
        session.connection().execute(
            update(outbox_table).values(sent_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    assert prune(sample_db, outbox_retention=None, inbox_retention=None) == (0, 0)
    assert len(outbox_rows(sample_db)) == 1


@pytest.mark.postgres
def test_publisher_lock_admits_one_relay(postgres_sample_db: Database) -> None:
    first = PublisherLock(postgres_sample_db)
    second = PublisherLock(postgres_sample_db)
    try:
        assert first.acquire() is True
        assert first.acquire() is True
        assert second.acquire() is False
        first.release()
        assert second.acquire() is True
    finally:
        first.release()
        second.release()


def test_publisher_lock_always_held_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'lock.db'}")
    assert PublisherLock(db).acquire() is True
    assert PublisherLock(db).acquire() is True


def retry_consumer(db: Database, max_attempts: int) -> EventConsumer:
    return EventConsumer(
        service="sample",
        db=db,
        handlers=[HANDLER],
        topics=["hin.records.events.v1"],
        consumer_config={"group.id": "g", "bootstrap.servers": "127.0.0.1:1"},
        producer_config={},
        tracer_provider=TracerProvider(),
        options=ConsumerOptions(max_attempts=max_attempts, backoff_initial=0.001),
    )


def test_failing_handler_retried_max_attempts(sample_db: Database) -> None:
    calls: list[str] = []

    def always_fail(session, event, envelope) -> None:  # type: ignore[no-untyped-def]
        calls.append(envelope.id)
        raise LookupError("patient p-1 not found")

    consumer = retry_consumer(sample_db, max_attempts=4)
    failing = Handler(events_pb2.PatientRecordUpdated, always_fail)
    with pytest.raises(LookupError, match="p-1 not found"):
        consumer.apply_with_retries(failing, sample_event(), envelope_for("e-1"))
    assert calls == ["e-1"] * 4
    assert inbox_count(sample_db, "g") == 0


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, CancelledError])
def test_interrupting_handler_not_retried(
    sample_db: Database, error: type[BaseException]
) -> None:
    calls: list[str] = []

    def interrupt(session, event, envelope) -> None:  # type: ignore[no-untyped-def]
        calls.append(envelope.id)
        raise error()

    consumer = retry_consumer(sample_db, max_attempts=4)
    interrupting = Handler(events_pb2.PatientRecordUpdated, interrupt)
    with pytest.raises(error):
        consumer.apply_with_retries(interrupting, sample_event(), envelope_for("e-1"))
    assert calls == ["e-1"]
    assert inbox_count(sample_db, "g") == 0


def test_handler_succeeds_on_second_attempt(sample_db: Database) -> None:
    calls: list[str] = []

    def fail_once(session, event, envelope) -> None:  # type: ignore[no-untyped-def]
        calls.append(envelope.id)
        if len(calls) == 1:
            raise ConnectionError("lookup service unavailable")
        HANDLER.fn(session, event, envelope)

    consumer = retry_consumer(sample_db, max_attempts=3)
    flaky = Handler(events_pb2.PatientRecordUpdated, fail_once)
    assert consumer.apply_with_retries(flaky, sample_event(), envelope_for("e-1"))
    assert calls == ["e-1", "e-1"]
    assert len(effects(sample_db, event_id="e-1")) == 1


@pytest.mark.parametrize(
    ("key", "subject", "event_id", "name"),
    [
        ("k" * 256, "", "", "key"),
        ("p-1", "s" * 256, "", "subject"),
        ("p-1", "", "e" * 37, "event id"),
    ],
    ids=["key", "subject", "event-id"],
)
def test_outbox_rejects_overlong_values(
    sample_db: Database, key: str, subject: str, event_id: str, name: str
) -> None:
    event = sample_event()
    event.context.event_id = event_id
    with pytest.raises(ValueError, match=f"outbox {name} has"):
        with sample_db.transaction() as session:
            OUTBOX.add(session, event, key=key, subject=subject)
    assert outbox_rows(sample_db) == []
