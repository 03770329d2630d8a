"""Crash points of the relay and the consumer: each effect is applied once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from bus_sample import HANDLER, effects, write_update
from kafka_probe import read_topic, wait_until
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import select

from mesh.runtime.events import (
    ConsumerOptions,
    Envelope,
    EventConsumer,
    Outbox,
    OutboxRelay,
    RelayOptions,
    consumer_config,
    outbox_table,
    producer_config,
)
from mesh.runtime.storage import Database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKER = Path(__file__).resolve().parent / "worker.py"
TOPIC = "hin.records.events.v1"
OUTBOX = Outbox(service="sample")
FAST_GROUP = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "500"}


def worker_env(db: Database, bootstrap: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HIN_DATABASE_URL": db.url.render_as_string(hide_password=False),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        **extra,
    }


def sent_at(db: Database, event_id: str) -> object:
    with db.transaction() as session:
        query = select(outbox_table.c.sent_at).where(
            outbox_table.c.event_id == event_id
        )
        return session.connection().scalar(query)


class Recorder:
    """Collect (event id, applied) pairs that a consumer reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope, applied: bool) -> None:
        with self._lock:
            self.seen.append((envelope.id, applied))

    def outcomes(self, event_id: str) -> list[bool]:
        with self._lock:
            return [applied for seen_id, applied in self.seen if seen_id == event_id]


def start_consumer(
    db: Database, bootstrap: str, group_id: str, recorder: Recorder
) -> EventConsumer:
    consumer = EventConsumer(
        service="sample",
        db=db,
        handlers=[HANDLER],
        topics=[TOPIC],
        consumer_config=consumer_config(
            bootstrap=bootstrap, group_id=group_id, client_id="test", extra=FAST_GROUP
        ),
        producer_config=producer_config(
            bootstrap=bootstrap, client_id="test", extra={}, delivery_timeout=10.0
        ),
        tracer_provider=TracerProvider(),
        options=ConsumerOptions(max_attempts=2, backoff_initial=0.05),
        after_transaction=recorder,
    )
    consumer.start()
    return consumer


def test_relay_killed_before_marking_sent(
    postgres_sample_db: Database, kafka_bootstrap: str, unique: str
) -> None:
    db = postgres_sample_db
    with db.transaction() as session:
        event_id = write_update(session, OUTBOX, f"p-{unique}", 1)

    # First relay: the broker confirms the record, then the process dies
    # before the row is marked sent.
    crashed = subprocess.run(
        [sys.executable, str(WORKER), "relay"],
        env=worker_env(db, kafka_bootstrap, HIN_TEST_CRASH_AT="after_delivery"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL
    assert '"delivered"' in crashed.stdout
    assert sent_at(db, event_id) is None

    # Second relay: sends the same row again and marks it sent.
    resent = subprocess.run(
        [sys.executable, str(WORKER), "relay"],
        env=worker_env(db, kafka_bootstrap),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resent.returncode == 0, resent.stderr
    assert sent_at(db, event_id) is not None
    copies = [
        r for r in read_topic(kafka_bootstrap, TOPIC) if r.headers["ce_id"] == event_id
    ]
    assert len(copies) == 2

    recorder = Recorder()
    consumer = start_consumer(db, kafka_bootstrap, f"crash-relay-{unique}", recorder)
    try:
        wait_until(
            lambda: len(recorder.outcomes(event_id)) >= 2, description="two deliveries"
        )
    finally:
        consumer.stop(timeout=10)
    # The first delivery applied the event; every later one was skipped.
    outcomes = recorder.outcomes(event_id)
    assert outcomes[0] is True
    assert not any(outcomes[1:])
    assert len(effects(db, event_id=event_id)) == 1


def test_consumer_killed_before_offset_commit(
    postgres_sample_db: Database, kafka_bootstrap: str, unique: str
) -> None:
    db = postgres_sample_db
    with db.transaction() as session:
        event_id = write_update(session, OUTBOX, f"p-{unique}", 1)
    relay = OutboxRelay(
        db=db,
        outbox=OUTBOX,
        producer_config=producer_config(
            bootstrap=kafka_bootstrap, client_id="test", extra={}, delivery_timeout=10.0
        ),
        tracer_provider=TracerProvider(),
        options=RelayOptions(),
    )
    assert relay.flush(timeout=30)
    group_id = f"crash-consumer-{unique}"

    # First consumer: the handler's transaction commits, then the process
    # dies before the offset commit.
    crashed = subprocess.run(
        [sys.executable, str(WORKER), "consumer"],
        env=worker_env(
            db,
            kafka_bootstrap,
            HIN_TEST_GROUP_ID=group_id,
            HIN_TEST_CRASH_AT="after_transaction",
            HIN_TEST_CRASH_EVENT_ID=event_id,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL
    assert len(effects(db, event_id=event_id)) == 1

    # Second consumer of the same group: gets the record again, skips it.
    restarted = subprocess.Popen(
        [sys.executable, str(WORKER), "consumer"],
        env=worker_env(db, kafka_bootstrap, HIN_TEST_GROUP_ID=group_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    outcome = None
    try:
        assert restarted.stdout is not None
        for line in restarted.stdout:
            report = json.loads(line)
            if report["event_id"] == event_id:
                outcome = report["applied"]
                break
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)
    assert outcome is False
    assert len(effects(db, event_id=event_id)) == 1
