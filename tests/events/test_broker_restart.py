"""A broker that restarts empty loses no event and causes no double effect."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from bus_sample import HANDLER, count_notes, effects, write_update
from confluent_kafka.admin import AdminClient
from kafka_probe import wait_until
from opentelemetry.sdk.trace import TracerProvider

from mesh.network.broker import EmbeddedBroker
from mesh.network.cli import main as hin
from mesh.runtime.events import (
    ConsumerOptions,
    Envelope,
    EventConsumer,
    Outbox,
    OutboxRelay,
    RelayOptions,
    all_event_topics,
    consumer_config,
    ensure_topics,
    producer_config,
)
from mesh.runtime.storage import Database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TOPIC = "hin.records.events.v1"
OUTBOX = Outbox(service="sample")
FAST_GROUP = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "500"}


class Recorder:
    """Collect (event id, applied) pairs that the consumer reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope, applied: bool) -> None:
        with self._lock:
            self.seen.append((envelope.id, applied))

    def applied(self) -> set[str]:
        with self._lock:
            return {event_id for event_id, applied in self.seen if applied}

    def skipped(self) -> set[str]:
        with self._lock:
            return {event_id for event_id, applied in self.seen if not applied}


def test_broker_restart_empty_loses_nothing(
    postgres_sample_db: Database,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = postgres_sample_db
    patient_id = f"p-{unique}"
    recorder = Recorder()
    broker = EmbeddedBroker().start()
    bootstrap = broker.bootstrap
    ensure_topics(bootstrap=bootstrap, topics=all_event_topics())
    relay = OutboxRelay(
        db=db,
        outbox=OUTBOX,
        producer_config=producer_config(
            bootstrap=bootstrap, client_id="test", extra={}, delivery_timeout=2.0
        ),
        tracer_provider=TracerProvider(),
        options=RelayOptions(poll_interval=0.2, delivery_timeout=2.0),
        ensure_topics=lambda: ensure_topics(
            bootstrap=bootstrap, topics=all_event_topics()
        ),
    )
    consumer = EventConsumer(
        service="sample",
        db=db,
        handlers=[HANDLER],
        topics=[TOPIC],
        consumer_config=consumer_config(
            bootstrap=bootstrap,
            group_id=f"restart-{unique}",
            client_id="test",
            extra=FAST_GROUP,
        ),
        producer_config=producer_config(
            bootstrap=bootstrap, client_id="test", extra={}, delivery_timeout=2.0
        ),
        tracer_provider=TracerProvider(),
        options=ConsumerOptions(max_attempts=2, backoff_initial=0.05),
        after_transaction=recorder,
    )
    relay.start()
    consumer.start()
    try:

        def write(version: int) -> str:
            with db.transaction() as session:
                return write_update(session, OUTBOX, patient_id, version)

        before = [write(version) for version in (1, 2, 3)]
        wait_until(
            lambda: set(before) <= recorder.applied(), description="first events"
        )

        # Writes succeed while the broker is down; their events wait.
        broker.stop()
        during = [write(version) for version in (4, 5, 6)]
        assert count_notes(db) == 6
        assert relay.pending_count() >= 3

        # The broker comes back empty on the same port: the relay replaces
        # its producer and sends what was not confirmed.
        broker.start()
        wait_until(
            lambda: set(during) <= recorder.applied(), description="recovered events"
        )

        admin = AdminClient({"bootstrap.servers": bootstrap})
        metadata = admin.list_topics(TOPIC, timeout=10)
        partitions_after_restart = len(metadata.topics[TOPIC].partitions)

        # hin replay publishes all six again; the consumer skips each.
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        url = db.url.render_as_string(hide_password=False)
        code = hin(
            [
                "--state",
                str(tmp_path),
                "replay",
                "--service",
                "sample",
                "--database-url",
                url,
            ]
        )
        assert code == 0
        assert "republished 6 events" in capsys.readouterr().out
        wait_until(
            lambda: set(before + during) <= recorder.skipped(),
            description="replayed events",
        )
    finally:
        consumer.stop(timeout=10)
        relay.stop(timeout=5)
        broker.stop()

    # The recovered topic was created with its partition count, not by a
    # produce request with the broker's default.
    assert partitions_after_restart == 3
    rows = effects(db, patient_id=patient_id)
    assert [row.event_id for row in rows] == before + during
    assert [row.version for row in rows] == [1, 2, 3, 4, 5, 6]
    assert relay.pending_count() == 0
