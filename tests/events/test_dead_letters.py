"""Poison and undecodable records go to the dead-letter topic; hin dlq."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bus_sample import HANDLER, effects, record_effect, write_update
from confluent_kafka import Producer
from kafka_probe import read_topic, wait_until
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.orm import Session

from hin.records.v1 import events_pb2
from mesh.network.broker import EmbeddedBroker
from mesh.network.cli import main as hin
from mesh.runtime.events import (
    ConsumerOptions,
    Envelope,
    EventConsumer,
    Handler,
    Outbox,
    OutboxRelay,
    RelayOptions,
    all_event_topics,
    consumer_config,
    ensure_topics,
    producer_config,
)
from mesh.runtime.storage import Database

pytestmark = pytest.mark.slow

TOPIC = "hin.records.events.v1"
DLQ = "hin.records.events.v1.dlq"
OUTBOX = Outbox(service="sample")
FAST_GROUP = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "500"}


class PoisonError(Exception):
    """Raised by the test handler for the poison event."""


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """Private broker, so these dead letters stay out of other tests' topics."""
    with EmbeddedBroker() as broker:
        ensure_topics(bootstrap=broker.bootstrap, topics=all_event_topics())
        yield broker.bootstrap


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    from bus_sample import SampleBase

    database = Database(f"sqlite:///{tmp_path / 'sample.db'}")
    database.create_all(SampleBase.metadata)
    yield database
    database.dispose()


@pytest.fixture
def relay(db: Database, bootstrap: str) -> Iterator[OutboxRelay]:
    relay = OutboxRelay(
        db=db,
        outbox=OUTBOX,
        producer_config=producer_config(
            bootstrap=bootstrap, client_id="test", extra={}, delivery_timeout=10.0
        ),
        tracer_provider=TracerProvider(),
        options=RelayOptions(poll_interval=0.2),
    )
    relay.start()
    yield relay
    relay.stop(timeout=5)


def start_consumer(
    db: Database, bootstrap: str, group_id: str, handler: Handler[object]
) -> EventConsumer:
    consumer = EventConsumer(
        service="sample",
        db=db,
        handlers=[handler],
        topics=[TOPIC],
        consumer_config=consumer_config(
            bootstrap=bootstrap, group_id=group_id, client_id="test", extra=FAST_GROUP
        ),
        producer_config=producer_config(
            bootstrap=bootstrap, client_id="test", extra={}, delivery_timeout=10.0
        ),
        tracer_provider=TracerProvider(),
        options=ConsumerOptions(max_attempts=3, backoff_initial=0.01, backoff_max=0.05),
    )
    consumer.start()
    return consumer


def write(db: Database, patient_id: str, version: int) -> str:
    with db.transaction() as session:
        return write_update(session, OUTBOX, patient_id, version)


def dlq_list(monkeypatch: pytest.MonkeyPatch, bootstrap: str, capsys) -> list[dict]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    capsys.readouterr()
    assert hin(["dlq", "list", "--topic", TOPIC, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_poison_record_retried_then_dead_lettered(
    db: Database,
    bootstrap: str,
    relay: OutboxRelay,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    attempts: Counter[str] = Counter()
    fixed = threading.Event()

    def reject_version_two(
        session: Session, event: events_pb2.PatientRecordUpdated, envelope: Envelope
    ) -> None:
        if event.patient.version == 2 and not fixed.is_set():
            attempts[envelope.id] += 1
            raise PoisonError(f"version 2 of event {envelope.id} rejected")
        record_effect(session, event, envelope)

    patient_id = f"p-{unique}"
    first, poison, last = (write(db, patient_id, version) for version in (1, 2, 3))
    consumer = start_consumer(
        db,
        bootstrap,
        f"poison-{unique}",
        Handler(events_pb2.PatientRecordUpdated, reject_version_two),
    )
    try:
        wait_until(
            lambda: bool(effects(db, event_id=last)), description="the third event"
        )

        # The handler ran the configured number of times, then moved on.
        assert attempts[poison] == 3
        assert effects(db, event_id=poison) == []
        assert len(effects(db, event_id=first)) == 1
        original = [
            r for r in read_topic(bootstrap, TOPIC) if r.headers["ce_id"] == poison
        ]
        assert len(original) == 1
        after = effects(db, event_id=last)[0]
        assert after.partition == original[0].partition
        assert after.offset > original[0].offset

        # The dead letter carries the record and the error in its headers.
        letters = [
            r for r in read_topic(bootstrap, DLQ) if r.headers["ce_id"] == poison
        ]
        assert len(letters) == 1
        headers = letters[0].headers
        assert headers["hin_dlq_error_type"] == "PoisonError"
        assert (
            headers["hin_dlq_error_message"] == f"version 2 of event {poison} rejected"
        )
        assert headers["hin_dlq_attempts"] == "3"
        assert headers["hin_dlq_original_topic"] == TOPIC
        assert headers["hin_dlq_original_partition"] == str(original[0].partition)
        assert headers["hin_dlq_original_offset"] == str(original[0].offset)
        assert headers["hin_dlq_consumer_group"] == f"poison-{unique}"
        assert headers["ce_type"] == "hin.records.v1.PatientRecordUpdated"
        assert letters[0].key == patient_id
        assert letters[0].value == original[0].value

        # hin dlq list shows it; hin dlq replay sends it back once the
        # handler is fixed, and the consumer applies it.
        listed = [
            e
            for e in dlq_list(monkeypatch, bootstrap, capsys)
            if e["event_id"] == poison
        ]
        assert len(listed) == 1
        assert listed[0]["error_type"] == "PoisonError"
        assert listed[0]["attempts"] == 3
        assert listed[0]["original_offset"] == original[0].offset
        assert listed[0]["replayed"] is False

        fixed.set()
        assert hin(["dlq", "replay", "--topic", TOPIC]) == 0
        assert "replayed 1 dead letters" in capsys.readouterr().out
        wait_until(
            lambda: bool(effects(db, event_id=poison)), description="the replayed event"
        )
        assert len(effects(db, event_id=poison)) == 1
        relisted = [
            e
            for e in dlq_list(monkeypatch, bootstrap, capsys)
            if e["event_id"] == poison
        ]
        assert relisted[0]["replayed"] is True
    finally:
        consumer.stop(timeout=10)


def test_undecodable_and_unknown_records(
    db: Database, bootstrap: str, relay: OutboxRelay, unique: str
) -> None:
    calls: Counter[str] = Counter()

    def count_calls(
        session: Session, event: events_pb2.PatientRecordUpdated, envelope: Envelope
    ) -> None:
        calls[envelope.id] += 1
        record_effect(session, event, envelope)

    # An undecodable payload, an event type without a handler and an event id
    # too long for the inbox, all on the patient's partition ahead of a valid
    # event.
    key = f"p-{unique}"
    # 46 characters, longer than the 36 of a UUID that the inbox stores.
    long_id = f"long-{unique}-" + "x" * 30
    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"}
    )
    for event_id, event_type, value in (
        (f"bad-{unique}", "hin.records.v1.PatientRecordUpdated", b"\xff\xff\xff"),
        (f"unknown-{unique}", "hin.records.v1.NoSuchEvent", b""),
        (long_id, "hin.records.v1.PatientRecordUpdated", b""),
    ):
        producer.produce(
            TOPIC,
            key=key.encode(),
            value=value,
            headers=[("ce_id", event_id.encode()), ("ce_type", event_type.encode())],
        )
    assert producer.flush(10) == 0
    valid = write(db, key, 1)

    consumer = start_consumer(
        db,
        bootstrap,
        f"undecodable-{unique}",
        Handler(events_pb2.PatientRecordUpdated, count_calls),
    )
    try:
        wait_until(
            lambda: bool(effects(db, event_id=valid)), description="the valid event"
        )
    finally:
        consumer.stop(timeout=10)

    assert calls[f"bad-{unique}"] == 0
    assert calls[valid] == 1
    letters = {r.headers["ce_id"]: r for r in read_topic(bootstrap, DLQ)}
    bad = letters[f"bad-{unique}"]
    assert bad.headers["hin_dlq_error_type"] == "InvalidEvent"
    assert bad.headers["hin_dlq_attempts"] == "1"
    assert bad.value == b"\xff\xff\xff"
    assert f"unknown-{unique}" not in letters
    assert calls[long_id] == 0
    assert letters[long_id].headers["hin_dlq_error_type"] == "InvalidEvent"


def test_handler_registered_once_per_type() -> None:
    with pytest.raises(ValueError, match="two handlers"):
        EventConsumer(
            service="sample",
            db=Database("sqlite://"),
            handlers=[HANDLER, HANDLER],
            topics=[TOPIC],
            consumer_config={"group.id": "g"},
            producer_config={},
            tracer_provider=TracerProvider(),
        )
