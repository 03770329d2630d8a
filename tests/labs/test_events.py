"""Events in and out of svc_labs through the real broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from hin.records.v1 import events_pb2 as records_events
from mesh.runtime.events.envelope import cloudevents_headers

from .conftest import (
    RECORDS_TOPIC,
    MllpClient,
    Running,
    TopicReader,
    ack_fields,
    publish_records_event,
)
from .test_mllp_acceptance import nm_obx, oru, unmatched_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

MRN_SYSTEM = "urn:hin:id:mrn:org-1"


@pytest.fixture
async def reader(kafka_bootstrap: str) -> AsyncIterator[TopicReader]:
    topic_reader = TopicReader(kafka_bootstrap)
    try:
        yield topic_reader
    finally:
        topic_reader.close()


async def send(labs: Running, text: str) -> str:
    client = await MllpClient.connect(labs.mllp_port)
    try:
        return ack_fields(await client.send(text.encode()))["MSA"][1]
    finally:
        await client.close()


def mrn(value: str) -> types.Identifier:
    return types.Identifier(system=MRN_SYSTEM, value=value, type_code="MR")


async def test_hl7_correction_emits_corrected(
    labs: Running, reader: TopicReader
) -> None:
    labs.register_patient("patient-corr", [mrn("MRN-CORR")])
    pid3 = "MRN-CORR^^^CAIRO_GH^MR"
    first = oru("CORR-1", [nm_obx(1, "5.0", "2823-3")], pid3=pid3)
    corrected = oru(
        "CORR-2",
        [nm_obx(1, "6.5", "2823-3").replace("|||||F", "|||||C")],
        pid3=pid3,
    )
    # Both messages carry the same placer and filler numbers, so the second
    # reports the same observation again.
    corrected = corrected.replace("PLACER-CORR-2", "PLACER-CORR-1").replace(
        "FILLER-CORR-2", "FILLER-CORR-1"
    )
    assert await send(labs, first) == "AA"
    assert await send(labs, corrected) == "AA"

    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.TestResultCorrected" and key == "patient-corr"
        )
    )
    event = events.TestResultCorrected.FromString(value)
    assert event.previous_version == 1
    assert event.result.version == 2
    assert event.result.value.quantity == "6.5"
    assert event.result.critical is True
    assert event.result.status == events.ResultStatus.RESULT_STATUS_CORRECTED

    history = await labs.stub.GetResultHistory(
        pb.GetResultHistoryRequest(result_id=event.result.result_id),
        metadata=labs.clinician_auth,
    )
    assert [v.value.quantity for v in history.versions] == ["5.0", "6.5"]


async def test_orm_emits_order_placed(labs: Running, reader: TopicReader) -> None:
    labs.register_patient("patient-orm", [mrn("MRN-ORM")])
    text = (
        "MSH|^~\\&|CPOE|LAB1|LIS|LAB1|20240301101500||ORM^O01|ORM-1|P|2.3\r"
        "PID|1||MRN-ORM^^^CAIRO_GH^MR\r"
        "ORC|NW|ORD-77|||||^^^^^S||20240301101000|||DOC-9^Doctor^Some\r"
        "OBR|1|ORD-77||2823-3^Potassium^LN\r"
        "OBR|2|ORD-77||2951-2^Sodium^LN\r"
    )
    assert await send(labs, text) == "AA"
    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.LabOrderPlaced" and key == "patient-orm"
        )
    )
    event = events.LabOrderPlaced.FromString(value)
    assert [t.code for t in event.tests] == ["2823-3", "2951-2"]
    assert event.priority == events.Priority.PRIORITY_STAT
    assert event.ordering_practitioner_id == "DOC-9"
    assert event.placed_at.ToDatetime(tzinfo=UTC) == datetime(
        2024, 3, 1, 8, 10, tzinfo=UTC
    )


async def test_poison_record_then_valid_registration(
    labs: Running, reader: TopicReader, kafka_bootstrap: str
) -> None:
    assert (
        await send(
            labs,
            oru(
                "POISON-1",
                [nm_obx(1, "6.8", "2823-3")],
                pid3="MRN-POISON^^^CAIRO_GH^MR",
            ),
        )
        == "AA"
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    poison_id = str(uuid.uuid4())
    producer.produce(
        RECORDS_TOPIC,
        key=b"patient-poison",
        value=b"\xff\x00 not a protobuf",
        headers=cloudevents_headers(
            event_id=poison_id,
            source="hin://records",
            event_type="hin.records.v1.PatientRegistered",
            time=datetime.now(UTC),
            subject="patient-poison",
            traceparent="",
            tracestate="",
        ),
    )
    assert producer.flush(30) == 0
    publish_records_event(
        kafka_bootstrap,
        records_events.PatientRegistered(
            patient=records_events.PatientSnapshot(
                patient_id="patient-poison", version=1, identifiers=[mrn("MRN-POISON")]
            )
        ),
        "patient-poison",
    )

    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.TestResultPublished" and key == "patient-poison"
        )
    )
    assert events.TestResultPublished.FromString(value).result.critical is True


async def test_merge_moves_results(labs: Running) -> None:
    labs.register_patient("patient-dup", [mrn("MRN-DUP")])
    labs.register_patient("patient-keep", [mrn("MRN-KEEP")])
    assert (
        await send(
            labs, oru("MERGE-1", [nm_obx(1, "141")], pid3="MRN-DUP^^^CAIRO_GH^MR")
        )
        == "AA"
    )
    labs.merge_patients("patient-dup", "patient-keep")

    survivor = await labs.stub.ListResults(
        pb.ListResultsRequest(patient_id="patient-keep"), metadata=labs.clinician_auth
    )
    assert [r.value.quantity for r in survivor.results] == ["141"]
    assert survivor.results[0].patient_id == "patient-keep"
    merged = await labs.stub.ListResults(
        pb.ListResultsRequest(patient_id="patient-dup"), metadata=labs.clinician_auth
    )
    assert [r.result_id for r in merged.results] == [
        r.result_id for r in survivor.results
    ]


async def test_result_after_merge_goes_to_survivor(labs: Running) -> None:
    labs.register_patient("patient-old", [mrn("MRN-OLD")])
    labs.register_patient("patient-new", [mrn("MRN-NEW")])
    labs.merge_patients("patient-old", "patient-new")
    text = oru("AFTER-MERGE-1", [nm_obx(1, "139")], pid3="MRN-OLD^^^CAIRO_GH^MR")
    assert await send(labs, text) == "AA"
    assert await unmatched_of(labs, "AFTER-MERGE-1") == []
    results = await labs.stub.ListResults(
        pb.ListResultsRequest(patient_id="patient-new"), metadata=labs.clinician_auth
    )
    assert [r.value.quantity for r in results.results] == ["139"]


async def test_acknowledgement_event_published(
    labs: Running, reader: TopicReader
) -> None:
    order = await labs.stub.PlaceOrder(
        pb.PlaceOrderRequest(
            patient_id="patient-ack",
            tests=[types.Coding(system="http://loinc.org", code="2823-3")],
        ),
        metadata=labs.clinician_auth,
    )
    recorded = await labs.stub.RecordResult(
        pb.RecordResultRequest(
            order_id=order.order.order_id,
            test=types.Coding(system="http://loinc.org", code="2823-3"),
            value=events.ResultValue(quantity="2.1", unit="mmol/L"),
            status=events.ResultStatus.RESULT_STATUS_FINAL,
        ),
        metadata=labs.clinician_auth,
    )
    await labs.stub.AcknowledgeCriticalResult(
        pb.AcknowledgeCriticalResultRequest(result_id=recorded.result.result_id),
        metadata=labs.clinician_auth,
    )

    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.TestResultPublished" and key == "patient-ack"
        )
    )
    published = events.TestResultPublished.FromString(value)
    assert published.result.critical is True
    assert published.result.interpretation == (
        events.Interpretation.INTERPRETATION_CRITICAL_LOW
    )
    assert published.result.ordering_practitioner_id == "prac-1"
    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.CriticalResultAcknowledged" and key == "patient-ack"
        )
    )
    acknowledged = events.CriticalResultAcknowledged.FromString(value)
    assert acknowledged.result_id == recorded.result.result_id
    assert acknowledged.acknowledged_by == "prac-1"
    assert acknowledged.context.actor == "user-clinician"


async def test_correct_result_rpc_emits_corrected(
    labs: Running, reader: TopicReader
) -> None:
    sodium = types.Coding(system="http://loinc.org", code="2951-2")
    order = await labs.stub.PlaceOrder(
        pb.PlaceOrderRequest(patient_id="patient-fix", tests=[sodium]),
        metadata=labs.clinician_auth,
    )
    recorded = await labs.stub.RecordResult(
        pb.RecordResultRequest(
            order_id=order.order.order_id,
            test=sodium,
            value=events.ResultValue(quantity="150", unit="mmol/L"),
            status=events.ResultStatus.RESULT_STATUS_FINAL,
        ),
        metadata=labs.clinician_auth,
    )
    await labs.stub.CorrectResult(
        pb.CorrectResultRequest(
            result_id=recorded.result.result_id,
            expected_version=1,
            value=events.ResultValue(quantity="115", unit="mmol/L"),
            reason="transcription error",
        ),
        metadata=labs.clinician_auth,
    )

    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.TestResultCorrected" and key == "patient-fix"
        )
    )
    event = events.TestResultCorrected.FromString(value)
    assert event.reason == "transcription error"
    assert event.previous_version == 1
    assert event.result.value.quantity == "115"
    # 115 mmol/L is below the default sodium critical low of 120.
    assert event.result.critical is True
    assert (
        event.result.interpretation == events.Interpretation.INTERPRETATION_CRITICAL_LOW
    )


async def test_oru_attaches_to_placed_order(labs: Running, reader: TopicReader) -> None:
    labs.register_patient("patient-placed", [mrn("MRN-PLACED")])
    order = await labs.stub.PlaceOrder(
        pb.PlaceOrderRequest(
            patient_id="patient-placed",
            tests=[types.Coding(system="http://loinc.org", code="2823-3")],
        ),
        metadata=labs.clinician_auth,
    )
    order_id = order.order.order_id
    text = oru(
        "PLACED-1", [nm_obx(1, "6.9", "2823-3")], pid3="MRN-PLACED^^^CAIRO_GH^MR"
    ).replace("PLACER-PLACED-1", order_id)
    assert await send(labs, text) == "AA"

    _, value, _ = await reader.wait_for(
        lambda kind, value, key: (
            kind == "hin.labs.v1.TestResultPublished" and key == "patient-placed"
        )
    )
    event = events.TestResultPublished.FromString(value)
    assert event.result.order_id == order_id
    assert event.result.ordering_practitioner_id == "prac-1"
    assert event.result.critical is True
    fetched = await labs.stub.GetOrder(
        pb.GetOrderRequest(order_id=order_id), metadata=labs.clinician_auth
    )
    assert fetched.order.status == pb.OrderStatus.ORDER_STATUS_RESULTED


async def test_placer_of_other_patient_not_used(labs: Running) -> None:
    labs.register_patient("patient-x", [mrn("MRN-X")])
    other = await labs.stub.PlaceOrder(
        pb.PlaceOrderRequest(
            patient_id="patient-someone-else",
            tests=[types.Coding(system="http://loinc.org", code="2823-3")],
        ),
        metadata=labs.clinician_auth,
    )
    text = oru(
        "PLACED-2", [nm_obx(1, "4.0", "2823-3")], pid3="MRN-X^^^CAIRO_GH^MR"
    ).replace("PLACER-PLACED-2", other.order.order_id)
    assert await send(labs, text) == "AA"
    results = await labs.stub.ListResults(
        pb.ListResultsRequest(patient_id="patient-x"), metadata=labs.clinician_auth
    )
    [result] = results.results
    assert result.order_id != other.order.order_id
