"""Records events on the real embedded broker, in both directions."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fhir.resources.R4B.bundle import Bundle
from google.protobuf.message import Message

from hin.appointments.v1 import events_pb2 as appointment_events
from hin.common.v1 import types_pb2
from hin.labs.v1 import events_pb2 as lab_events
from hin.records.v1 import events_pb2 as record_events
from hin.records.v1 import records_service_pb2 as pb

from .conftest import (
    STOP_GRACE_SECONDS,
    RecordsServer,
    records_client,
    start_records,
)

RECORDS_TOPIC = "hin.records.events.v1"
#: Seconds a test waits for an event or its effect before failing.
WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
async def events_server(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[RecordsServer]:
    """Records service named "records", so its events carry that source."""
    state = tmp_path_factory.mktemp("records-events")
    host, channel = await start_records(state, kafka_bootstrap, name="records")
    yield records_client(host, channel, state)
    await channel.close()
    await host.stop(grace=STOP_GRACE_SECONDS)


def read_records_topic(
    bootstrap: str,
    match: Callable[[Any], bool],
    timeout: float = WAIT_SECONDS,
    topic: str = RECORDS_TOPIC,
) -> Any:
    """Return the first record of ``topic`` that ``match`` accepts."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        # Assigned directly, starting at the oldest record, so no group join
        # delays the test.
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        while datetime.datetime.now() < deadline:
            record = consumer.poll(0.2)
            if record is None or record.error():
                continue
            if match(record):
                return record
        raise AssertionError(f"no matching record on {topic} in {timeout}s")
    finally:
        consumer.close()


def headers_of(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers() or []}


def publish(bootstrap: str, event: Message, *, key: str, source: str) -> str:
    """Publish ``event`` the way another service's relay would; return its id."""
    event_id = str(uuid.uuid4())
    topic = f"hin.{event.DESCRIPTOR.file.package.split('.')[1]}.events.v1"
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        topic,
        key=key.encode(),
        value=event.SerializeToString(),
        headers=[
            ("ce_specversion", b"1.0"),
            ("ce_id", event_id.encode()),
            ("ce_source", source.encode()),
            ("ce_type", event.DESCRIPTOR.full_name.encode()),
            ("ce_time", b"2026-01-01T00:00:00Z"),
            ("ce_subject", key.encode()),
            ("content-type", b"application/protobuf"),
        ],
    )
    assert producer.flush(10) == 0
    return event_id


async def new_patient(server: RecordsServer, family: str) -> str:
    patient = pb.PatientDemographics(
        names=[types_pb2.HumanName(family=family, given=["Event"])],
        birth_date=types_pb2.Date(year=1955, month=5, day=5),
        gender=types_pb2.GENDER_FEMALE,
        identifiers=[types_pb2.Identifier(system="urn:test:events", value=family)],
    )
    response = await server.stub.RegisterPatient(
        pb.RegisterPatientRequest(patient=patient, allow_possible_duplicate=True),
        metadata=server.doctor,
    )
    return response.patient.patient_id


async def wait_for_summary(
    server: RecordsServer, patient_id: str, ready: Callable[[Any], bool]
) -> Any:
    for _ in range(int(WAIT_SECONDS / 0.2)):
        response = await server.stub.GetPatientSummary(
            pb.GetPatientSummaryRequest(patient_id=patient_id), metadata=server.doctor
        )
        if ready(response.summary):
            return response.summary
        await asyncio.sleep(0.2)
    raise AssertionError(f"summary of {patient_id} never became ready")


async def test_patient_registered_carries_trace(
    events_server: RecordsServer, kafka_bootstrap: str
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    response = await events_server.stub.RegisterPatient(
        pb.RegisterPatientRequest(
            patient=pb.PatientDemographics(
                names=[types_pb2.HumanName(family="Traced", given=["Tamer"])],
                identifiers=[types_pb2.Identifier(system="urn:test:ev", value="t-1")],
            )
        ),
        metadata=(*events_server.doctor, ("traceparent", traceparent)),
    )
    patient_id = response.patient.patient_id

    record = await asyncio.to_thread(
        read_records_topic,
        kafka_bootstrap,
        lambda r: r.key() == patient_id.encode(),
    )
    headers = headers_of(record)
    event = record_events.PatientRegistered.FromString(record.value())
    assert headers["ce_type"] == "hin.records.v1.PatientRegistered"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_source"] == "hin://records"
    assert headers["ce_subject"] == patient_id
    assert headers["ce_id"] == event.context.event_id
    assert headers["content-type"] == "application/protobuf"
    assert headers["traceparent"].split("-")[1] == trace_id
    assert event.context.trace_id == trace_id
    assert event.context.actor == "dr-1"
    assert event.context.organization_id == "org-1"
    assert event.patient.patient_id == patient_id
    assert event.patient.version == 1


async def test_merge_emits_patients_merged(
    events_server: RecordsServer, kafka_bootstrap: str
) -> None:
    survivor = await new_patient(events_server, "MergeSurvivor")
    duplicate = await new_patient(events_server, "MergeDuplicate")
    await events_server.stub.MergePatients(
        pb.MergePatientsRequest(
            surviving_patient_id=survivor, merged_patient_id=duplicate
        ),
        metadata=events_server.doctor,
    )
    record = await asyncio.to_thread(
        read_records_topic,
        kafka_bootstrap,
        lambda r: (
            headers_of(r).get("ce_type") == "hin.records.v1.PatientsMerged"
            and r.key() == survivor.encode()
        ),
    )
    event = record_events.PatientsMerged.FromString(record.value())
    assert event.surviving_patient_id == survivor
    assert event.merged_patient_id == duplicate
    assert event.survivor.patient_id == survivor


def lab_result(patient_id: str, version: int, quantity: str) -> lab_events.TestResult:
    result = lab_events.TestResult(
        result_id="result-ev-1",
        order_id="order-ev-1",
        patient_id=patient_id,
        test=types_pb2.Coding(
            system="http://loinc.org", code="4548-4", display="HbA1c"
        ),
        value=lab_events.ResultValue(quantity=quantity, unit="%"),
        interpretation=lab_events.INTERPRETATION_HIGH,
        status=lab_events.RESULT_STATUS_FINAL,
        version=version,
    )
    result.effective_at.FromJsonString("2026-01-01T08:00:00Z")
    return result


async def test_lab_results_become_observations(
    events_server: RecordsServer, kafka_bootstrap: str
) -> None:
    patient_id = await new_patient(events_server, "LabPatient")
    published = lab_events.TestResultPublished(result=lab_result(patient_id, 1, "6.9"))
    publish(kafka_bootstrap, published, key=patient_id, source="hin://labs")

    summary = await wait_for_summary(
        events_server, patient_id, lambda s: len(s.observations) == 1
    )
    observation = summary.observations[0]
    assert observation.value == "6.9"
    assert observation.unit == "%"
    assert observation.code.code == "4548-4"
    assert observation.interpretation == "HIGH"
    assert observation.status == "final"

    corrected = lab_events.TestResultCorrected(
        result=lab_result(patient_id, 2, "7.1"), previous_version=1
    )
    publish(kafka_bootstrap, corrected, key=patient_id, source="hin://labs")
    summary = await wait_for_summary(
        events_server,
        patient_id,
        lambda s: s.observations and s.observations[0].version == 2,
    )
    assert [o.value for o in summary.observations] == ["7.1"]

    exported = await events_server.stub.ExportPatient(
        pb.ExportPatientRequest(patient_id=patient_id), metadata=events_server.doctor
    )
    bundle = json.loads(exported.bundle)
    Bundle.model_validate(bundle)
    observations = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
    assert [o["valueQuantity"]["value"] for o in observations] == [7.1]


async def test_completed_appointment_records_encounter(
    events_server: RecordsServer, kafka_bootstrap: str
) -> None:
    patient_id = await new_patient(events_server, "VisitPatient")
    encounter_id = f"enc-{uuid.uuid4().hex[:8]}"
    completed = appointment_events.AppointmentCompleted(
        appointment=appointment_events.AppointmentSnapshot(
            appointment_id="appt-ev-1",
            patient_id=patient_id,
            practitioner_id="pract-ev-1",
            organization_id="org-1",
        ),
        encounter_id=encounter_id,
    )
    completed.appointment.period.start.FromJsonString("2026-01-02T09:00:00Z")
    completed.completed_at.FromJsonString("2026-01-02T09:20:00Z")
    # The same visit arrives twice under two event ids; a later visit on the
    # same key (so the same partition) shows when both were handled.
    for _ in range(2):
        publish(kafka_bootstrap, completed, key=patient_id, source="hin://appointments")
    later = appointment_events.AppointmentCompleted()
    later.CopyFrom(completed)
    later.appointment.appointment_id = "appt-ev-2"
    later.encounter_id = encounter_id + "-later"
    publish(kafka_bootstrap, later, key=patient_id, source="hin://appointments")

    summary = await wait_for_summary(
        events_server,
        patient_id,
        lambda s: any(e.appointment_id == "appt-ev-2" for e in s.encounters),
    )
    assert sorted(e.encounter_id for e in summary.encounters) == [
        encounter_id,
        encounter_id + "-later",
    ]
    first = next(e for e in summary.encounters if e.encounter_id == encounter_id)
    assert first.appointment_id == "appt-ev-1"
    assert first.practitioner_id == "pract-ev-1"

    record = await asyncio.to_thread(
        read_records_topic,
        kafka_bootstrap,
        lambda r: (
            headers_of(r).get("ce_type") == "hin.records.v1.EncounterRecorded"
            and r.key() == patient_id.encode()
        ),
    )
    event = record_events.EncounterRecorded.FromString(record.value())
    assert event.encounter_id == encounter_id
    assert event.appointment_id == "appt-ev-1"


async def test_unknown_patient_result_is_dead_lettered(
    events_server: RecordsServer, kafka_bootstrap: str
) -> None:
    patient_id = await new_patient(events_server, "AfterPoison")
    poison = lab_events.TestResultPublished(
        result=lab_result("no-such-patient", 1, "1")
    )
    poison.result.result_id = "result-poison-1"
    # Same key, so the same partition: the good result waits behind the poison.
    poison_id = publish(kafka_bootstrap, poison, key=patient_id, source="hin://labs")
    good = lab_events.TestResultPublished(result=lab_result(patient_id, 1, "5.5"))
    good.result.result_id = "result-after-poison-1"
    publish(kafka_bootstrap, good, key=patient_id, source="hin://labs")

    summary = await wait_for_summary(
        events_server, patient_id, lambda s: len(s.observations) == 1
    )
    assert [o.result_id for o in summary.observations] == ["result-after-poison-1"]
    record = await asyncio.to_thread(
        read_records_topic,
        kafka_bootstrap,
        lambda r: headers_of(r).get("ce_id") == poison_id,
        topic="hin.labs.events.v1.dlq",
    )
    assert headers_of(record)["hin_dlq_error_type"] == "UnknownPatient"
