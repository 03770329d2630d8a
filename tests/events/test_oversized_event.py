"""An event too large for Kafka does not hold up the events behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bus_sample import write_update
from kafka_probe import read_topic, wait_until
from opentelemetry.sdk.trace import TracerProvider

from hin.records.v1 import events_pb2
from mesh.network.broker import EmbeddedBroker
from mesh.runtime.events import (
    Outbox,
    OutboxRelay,
    RelayOptions,
    all_event_topics,
    ensure_topics,
    producer_config,
)
from mesh.runtime.storage import Database

pytestmark = pytest.mark.slow

TOPIC = "hin.records.events.v1"
DLQ = "hin.records.events.v1.dlq"
OUTBOX = Outbox(service="sample")
#: librdkafka's default message.max.bytes is 1,000,000.
OVERSIZED_BYTES = 1_200_000


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
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


def test_oversized_event_is_dead_lettered(db: Database, bootstrap: str) -> None:
    with db.transaction() as session:
        huge = events_pb2.PatientRecordUpdated()
        huge.patient.patient_id = "p-huge"
        huge.changed_fields.append("x" * OVERSIZED_BYTES)
        huge_id = OUTBOX.add(session, huge, key="p-huge")
    with db.transaction() as session:
        next_id = write_update(session, OUTBOX, "p-next", 1)

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
    try:
        wait_until(
            lambda: any(
                r.headers.get("ce_id") == next_id for r in read_topic(bootstrap, TOPIC)
            ),
            timeout=60,
            description="the event behind the oversized one",
        )
    finally:
        relay.stop(timeout=5)

    notices = read_topic(bootstrap, DLQ)
    assert [n.headers.get("ce_id") for n in notices] == [huge_id]
    assert notices[0].headers.get("hin_dlq_error_type") == "MSG_SIZE_TOO_LARGE"
    assert notices[0].value == b""
