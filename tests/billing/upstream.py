"""Upstream services' side of billing tests: outbox, relay and event builders.

Appointments and labs publish through an Outbox and an OutboxRelay on their
own database, exactly as their services do, so billing consumes records with
real CloudEvents headers and keys.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from confluent_kafka import Consumer
from google.protobuf.message import Message
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData

from hin.appointments.v1 import events_pb2 as appointments
from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as labs
from mesh.runtime.events import (
    Outbox,
    OutboxRelay,
    add_event_tables,
    producer_config,
)
from mesh.runtime.storage import Database


class Upstream:
    """One upstream service's outbox and relay on a SQLite file."""

    def __init__(self, *, service: str, folder: Path, bootstrap: str) -> None:
        self.db = Database(f"sqlite:///{folder / (service + '.db')}")
        metadata = MetaData()
        add_event_tables(metadata)
        self.db.create_all(metadata)
        self.outbox = Outbox(service=service)
        self.relay = OutboxRelay(
            db=self.db,
            outbox=self.outbox,
            producer_config=producer_config(
                bootstrap=bootstrap,
                client_id=f"test-{service}",
                extra={},
                delivery_timeout=10.0,
            ),
            tracer_provider=TracerProvider(),
        )

    def publish(self, events: Iterable[tuple[Message, str]]) -> list[str]:
        """Write (event, patient id) pairs in one transaction, then send them.

        Returns:
            The event ids, in the given order.
        """
        with self.db.transaction() as session:
            ids = [
                self.outbox.add(session, event, key=patient_id)
                for event, patient_id in events
            ]
        self.relay.publish_pending()
        return ids

    def republish_all(self) -> int:
        """Send every outbox row again with its original event id."""
        return self.relay.republish(since=None, until=None)

    def close(self) -> None:
        self.relay.stop(timeout=5.0)
        self.db.dispose()


def appointment_completed(
    patient_id: str, visit_code: str = "visit-general"
) -> appointments.AppointmentCompleted:
    event = appointments.AppointmentCompleted(
        appointment=appointments.AppointmentSnapshot(
            appointment_id=f"appt-{uuid.uuid4().hex[:10]}",
            patient_id=patient_id,
            practitioner_id="prac-1",
            organization_id="org-1",
            service_type=types.Coding(
                system="urn:hin:code:visit-type", code=visit_code
            ),
        ),
        encounter_id=f"enc-{uuid.uuid4().hex[:10]}",
    )
    event.completed_at.FromDatetime(dt.datetime(2026, 6, 1, 10, tzinfo=dt.UTC))
    return event


def result_published(
    patient_id: str,
    loinc_code: str = "2339-0",
    *,
    status: int = labs.RESULT_STATUS_FINAL,
    historical: bool = False,
) -> labs.TestResultPublished:
    event = labs.TestResultPublished(
        result=labs.TestResult(
            result_id=f"res-{uuid.uuid4().hex[:10]}",
            order_id="ord-1",
            patient_id=patient_id,
            test=types.Coding(system="http://loinc.org", code=loinc_code),
            status=status,  # type: ignore[arg-type]
        ),
        historical=historical,
    )
    event.result.effective_at.FromDatetime(dt.datetime(2026, 6, 1, 11, tzinfo=dt.UTC))
    return event


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 60.0, what: str
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout``.

    The timeout only bounds a hung test: no assertion depends on timing.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    complete: Callable[[list[tuple[dict[str, str], bytes]]], bool],
    timeout: float = 60.0,
    idle_seconds: float = 2.0,
) -> list[tuple[dict[str, str], bytes]]:
    """Read ``topic`` from the start until ``complete`` holds and it goes idle.

    Reading on for ``idle_seconds`` after ``complete`` holds lets a test see
    records that should not be there, such as duplicates.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[dict[str, str], bytes]] = []
    deadline = time.monotonic() + timeout
    done_at: float | None = None
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                headers = {
                    name: (value or b"").decode()
                    for name, value in message.headers() or []
                }
                records.append((headers, message.value() or b""))
                if done_at is not None:
                    done_at = time.monotonic()
            if done_at is None and complete(records):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > idle_seconds:
                return records
    finally:
        consumer.close()
    raise AssertionError(f"timed out after {timeout} s reading {topic}")
