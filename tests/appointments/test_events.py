"""Events through the real broker: records' patients in, scheduling's out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import events_pb2
from hin.records.v1 import events_pb2 as records_events
from mesh.runtime.events.envelope import cloudevents_headers, decode_headers
from svc_appointments.store import PatientSnapshotRow

from .conftest import Running, cairo, new_practitioner, next_weekday, period

pytestmark = pytest.mark.asyncio(loop_scope="session")

APPOINTMENTS_TOPIC = "hin.appointments.events.v1"
RECORDS_TOPIC = "hin.records.events.v1"
#: Upper bound on waiting for the broker; a failure, not a timing assertion.
DEADLINE = timedelta(seconds=60)


def publish_patient_registered(bootstrap: str, patient_id: str) -> None:
    """Publish PatientRegistered as records would, with CloudEvents headers."""
    event = records_events.PatientRegistered(
        patient=records_events.PatientSnapshot(patient_id=patient_id, version=1)
    )
    event_id = str(uuid.uuid4())
    event.context.event_id = event_id
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        RECORDS_TOPIC,
        key=patient_id.encode(),
        value=event.SerializeToString(),
        headers=cloudevents_headers(
            event_id=event_id,
            source="hin://records",
            event_type=event.DESCRIPTOR.full_name,
            time=datetime.now(UTC),
            subject=patient_id,
            traceparent="",
            tracestate="",
        ),
    )
    assert producer.flush(30) == 0


async def wait_for_patient(service: Running, patient_id: str) -> None:
    deadline = datetime.now(UTC) + DEADLINE
    while datetime.now(UTC) < deadline:
        with service.host.db.transaction() as session:
            if session.get(PatientSnapshotRow, patient_id) is not None:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"PatientRegistered for {patient_id} not applied within {DEADLINE}"
    )


def read_event(bootstrap: str, event_type: str, subject: str) -> tuple[dict, bytes]:
    """Return the headers and value of the first matching record on the topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([APPOINTMENTS_TOPIC])
    deadline = datetime.now(UTC) + DEADLINE
    try:
        while datetime.now(UTC) < deadline:
            record = consumer.poll(0.5)
            if record is None or record.error():
                continue
            headers = decode_headers(record.headers())
            if (
                headers.get("ce_type") == event_type
                and headers.get("ce_subject") == subject
            ):
                return headers, record.value()
    finally:
        consumer.close()
    raise AssertionError(f"no {event_type} for {subject} on {APPOINTMENTS_TOPIC}")


async def test_patient_registered_event_enables_booking(
    service: Running, kafka_bootstrap: str
) -> None:
    practitioner_id = await new_practitioner(service, "3000000002")
    await asyncio.to_thread(
        publish_patient_registered, kafka_bootstrap, "patient-from-records-1"
    )
    await wait_for_patient(service, "patient-from-records-1")
    monday = next_weekday(1)

    booked = await service.stub.Book(
        pb.BookRequest(
            patient_id="patient-from-records-1",
            practitioner_id=practitioner_id,
            period=period(cairo(monday, 9, 0), cairo(monday, 9, 15)),
        ),
        metadata=service.scheduler_auth,
    )

    assert booked.appointment.status == pb.APPOINTMENT_STATUS_BOOKED
    with service.host.db.transaction() as session:
        row = session.get(PatientSnapshotRow, "patient-from-records-1")
        assert row is not None
        assert row.version == 1


async def test_appointment_completed_reaches_consumer(
    service: Running, kafka_bootstrap: str
) -> None:
    practitioner_id = await new_practitioner(service, "3000000001")
    service.register_patients("patient-events-1")
    trace_id = uuid.uuid4().hex
    traced = [
        *service.scheduler_auth,
        ("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"),
    ]
    monday = next_weekday(1)
    booked = await service.stub.Book(
        pb.BookRequest(
            patient_id="patient-events-1",
            practitioner_id=practitioner_id,
            period=period(cairo(monday, 9, 0), cairo(monday, 9, 15)),
        ),
        metadata=service.scheduler_auth,
    )
    appointment_id = booked.appointment.appointment_id
    await service.stub.CheckIn(
        pb.CheckInRequest(appointment_id=appointment_id, expected_version=1),
        metadata=service.scheduler_auth,
    )
    completed = await service.stub.Complete(
        pb.CompleteRequest(appointment_id=appointment_id, expected_version=2),
        metadata=traced,
    )

    headers, value = await asyncio.to_thread(
        read_event,
        kafka_bootstrap,
        "hin.appointments.v1.AppointmentCompleted",
        appointment_id,
    )
    event = events_pb2.AppointmentCompleted.FromString(value)

    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_source"] == "hin://appointments"
    assert headers["ce_id"] == event.context.event_id
    assert headers["content-type"] == "application/protobuf"
    assert headers["traceparent"].split("-")[1] == trace_id
    assert event.context.trace_id == trace_id
    assert event.encounter_id == completed.appointment.encounter_id
    assert event.appointment.patient_id == "patient-events-1"
