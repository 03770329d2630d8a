"""Care relationships and patient snapshots maintained from Kafka events.

Upstream events are produced with a plain producer and the CloudEvents
headers, as another service's relay would send them; the authz service's
consumer applies them.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import Awaitable, Callable

from confluent_kafka import Producer
from google.protobuf.message import Message

from hin.appointments.v1 import events_pb2 as appointments
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import topic_for_event
from mesh.runtime.events.envelope import cloudevents_headers
from tests.authz.conftest import AuthzHarness, Person

DOCTOR = Person("k-dr", ("doctor",), "hosp-a", practitioner_id="k-pr")
#: Upper bound for the consumer to apply an event. The first assignment of a
#: new consumer group alone takes about 3 s on the embedded broker.
WAIT_SECONDS = 45.0


def _produce(
    bootstrap: str, records_to_send: list[tuple[str, Message | bytes]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, event in records_to_send:
        if isinstance(event, bytes):
            # A record whose payload does not decode: ce_type names a real
            # event type so the consumer tries, and fails, to decode it.
            type_name, topic, payload = (
                "hin.appointments.v1.AppointmentBooked",
                "hin.appointments.events.v1",
                event,
            )
        else:
            type_name = event.DESCRIPTOR.full_name
            topic = topic_for_event(event)
            payload = event.SerializeToString()
        producer.produce(
            topic,
            key=key,
            value=payload,
            headers=cloudevents_headers(
                event_id=str(uuid.uuid4()),
                source="hin://tests",
                event_type=type_name,
                time=datetime.datetime.now(datetime.UTC),
                subject=key,
                traceparent="",
                tracestate="",
            ),
        )
    assert producer.flush(10) == 0


async def _eventually(condition: Callable[[], Awaitable[bool]]) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.2)
    return False


def _booked(appointment_id: str, patient_id: str) -> appointments.AppointmentBooked:
    return appointments.AppointmentBooked(
        appointment=appointments.AppointmentSnapshot(
            appointment_id=appointment_id,
            patient_id=patient_id,
            practitioner_id="k-pr",
            organization_id="hosp-a",
        )
    )


async def test_booking_opens_and_cancel_closes(
    authz: AuthzHarness, kafka_bootstrap: str
) -> None:
    registered = records.PatientRegistered(
        patient=records.PatientSnapshot(
            patient_id="k-p1", managing_organization_id="hosp-a", version=1
        )
    )
    booked = _booked("k-ap-1", "k-p1")
    _produce(kafka_bootstrap, [("k-p1", registered), ("k-p1", booked)])

    async def allowed() -> bool:
        response = await authz.check(DOCTOR, "records.clinical.read", "k-p1")
        return response.allowed

    opened = await _eventually(allowed)

    cancelled = appointments.AppointmentCancelled(appointment=booked.appointment)
    _produce(kafka_bootstrap, [("k-p1", cancelled)])

    async def denied() -> bool:
        return not await allowed()

    closed = await _eventually(denied)
    assert opened
    assert closed


async def test_poison_record_does_not_block(
    authz: AuthzHarness, kafka_bootstrap: str
) -> None:
    registered = records.PatientRegistered(
        patient=records.PatientSnapshot(
            patient_id="k-p2", managing_organization_id="hosp-a", version=1
        )
    )
    _produce(
        kafka_bootstrap,
        [
            ("k-p2", registered),
            ("k-p2", b"\xff\xff not a protobuf"),
            # Valid protobuf, but no patient: the handler raises on it.
            ("k-p2", _booked("k-ap-bad", "")),
            ("k-p2", _booked("k-ap-2", "k-p2")),
        ],
    )

    async def allowed() -> bool:
        response = await authz.check(DOCTOR, "records.clinical.read", "k-p2")
        return response.allowed

    assert await _eventually(allowed)
