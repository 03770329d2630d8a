"""LabsService through a real in-process server and the generated stub."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from hin.common.v1 import fhir_pb2
from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb

from .conftest import MllpClient, Running, ack_fields

pytestmark = pytest.mark.asyncio(loop_scope="session")

LOINC = "http://loinc.org"
POTASSIUM = types.Coding(system=LOINC, code="2823-3", display="Potassium")
SODIUM = types.Coding(system=LOINC, code="2951-2", display="Sodium")
SYNTHEA_FILE = "Enda_Schaefer_dd760206-6c4e-4e25-a799-f5c563e489a1.json"


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """Return the BadRequest field paths carried in an error's status details."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    return [v.field for v in bad_request.field_violations]
    return []


async def place_order(
    labs: Running, patient_id: str, *tests: types.Coding
) -> pb.LabOrder:
    response = await labs.stub.PlaceOrder(
        pb.PlaceOrderRequest(
            patient_id=patient_id,
            tests=list(tests) or [POTASSIUM],
            priority=events.Priority.PRIORITY_STAT,
        ),
        metadata=labs.clinician_auth,
    )
    return response.order


async def record(
    labs: Running, order: pb.LabOrder, quantity: str, test: types.Coding = POTASSIUM
) -> events.TestResult:
    response = await labs.stub.RecordResult(
        pb.RecordResultRequest(
            order_id=order.order_id,
            test=test,
            value=events.ResultValue(quantity=quantity, unit="mmol/L"),
            status=events.ResultStatus.RESULT_STATUS_FINAL,
        ),
        metadata=labs.clinician_auth,
    )
    return response.result


async def test_place_order_defaults(labs: Running) -> None:
    order = await place_order(labs, "patient-1")
    assert order.order_id
    assert order.patient_id == "patient-1"
    assert order.ordering_practitioner_id == "prac-1"
    assert order.status == pb.OrderStatus.ORDER_STATUS_PLACED
    assert order.priority == events.Priority.PRIORITY_STAT
    assert order.version == 1


async def test_place_order_names_bad_fields(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.PlaceOrder(
            pb.PlaceOrderRequest(tests=[types.Coding(system="urn:other", code="")]),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [
        "patient_id",
        "tests[0].code",
        "tests[0].system",
    ]


async def test_place_order_idempotent(labs: Running) -> None:
    request = pb.PlaceOrderRequest(
        idempotency_key="order-key-1", patient_id="patient-1", tests=[SODIUM]
    )
    first = await labs.stub.PlaceOrder(request, metadata=labs.clinician_auth)
    second = await labs.stub.PlaceOrder(request, metadata=labs.clinician_auth)
    assert second.order.order_id == first.order.order_id


async def test_receptionist_denied(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.ListResults(
            pb.ListResultsRequest(patient_id="patient-1"),
            metadata=labs.receptionist_auth,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_missing_token_unauthenticated(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.GetOrder(pb.GetOrderRequest(order_id="x"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_specimen_then_stale_version(labs: Running) -> None:
    order = await place_order(labs, "patient-2")
    collected = await labs.stub.CollectSpecimen(
        pb.CollectSpecimenRequest(
            order_id=order.order_id,
            specimen_type=types.Coding(code="119297000", display="Blood specimen"),
            expected_version=1,
        ),
        metadata=labs.clinician_auth,
    )
    assert collected.order.status == pb.OrderStatus.ORDER_STATUS_SPECIMEN_COLLECTED
    assert collected.order.version == 2
    assert len(collected.order.specimens) == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.CollectSpecimen(
            pb.CollectSpecimenRequest(
                order_id=order.order_id,
                specimen_type=types.Coding(code="119297000"),
                expected_version=1,
            ),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_critical_result_acknowledged(labs: Running) -> None:
    order = await place_order(labs, "patient-3")
    result = await record(labs, order, "6.9")
    assert result.critical is True
    assert result.interpretation == events.Interpretation.INTERPRETATION_CRITICAL_HIGH

    ack = await labs.stub.AcknowledgeCriticalResult(
        pb.AcknowledgeCriticalResultRequest(result_id=result.result_id, note="called"),
        metadata=labs.clinician_auth,
    )
    assert ack.acknowledgement.acknowledged_by == "prac-1"
    fetched = await labs.stub.GetResult(
        pb.GetResultRequest(result_id=result.result_id), metadata=labs.clinician_auth
    )
    assert fetched.acknowledgement.note == "called"


async def test_normal_result_not_acknowledgeable(labs: Running) -> None:
    order = await place_order(labs, "patient-3")
    result = await record(labs, order, "4.1")
    assert result.critical is False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.AcknowledgeCriticalResult(
            pb.AcknowledgeCriticalResultRequest(result_id=result.result_id),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_result_for_unordered_test(labs: Running) -> None:
    order = await place_order(labs, "patient-3", POTASSIUM)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(labs, order, "140", SODIUM)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_record_result_rejects_bad_quantity(labs: Running) -> None:
    order = await place_order(labs, "patient-3")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(labs, order, "abc")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["value.quantity"]


async def test_correct_result_keeps_history(labs: Running) -> None:
    order = await place_order(labs, "patient-4")
    original = await record(labs, order, "5.1")
    corrected = await labs.stub.CorrectResult(
        pb.CorrectResultRequest(
            result_id=original.result_id,
            expected_version=1,
            value=events.ResultValue(quantity="6.4", unit="mmol/L"),
            reason="haemolysed sample re-run",
        ),
        metadata=labs.clinician_auth,
    )
    assert corrected.result.version == 2
    assert corrected.result.status == events.ResultStatus.RESULT_STATUS_CORRECTED
    assert corrected.result.critical is True

    history = await labs.stub.GetResultHistory(
        pb.GetResultHistoryRequest(result_id=original.result_id),
        metadata=labs.clinician_auth,
    )
    assert [v.value.quantity for v in history.versions] == ["5.1", "6.4"]
    assert [v.version for v in history.versions] == [1, 2]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.CorrectResult(
            pb.CorrectResultRequest(
                result_id=original.result_id,
                expected_version=1,
                value=events.ResultValue(quantity="6.0", unit="mmol/L"),
                reason="again",
            ),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_list_results_pages(labs: Running) -> None:
    order = await place_order(labs, "patient-5", SODIUM)
    for value in ("131", "132", "133"):
        await record(labs, order, value, SODIUM)
    first = await labs.stub.ListResults(
        pb.ListResultsRequest(
            patient_id="patient-5", page=types.PageRequest(page_size=2)
        ),
        metadata=labs.clinician_auth,
    )
    assert len(first.results) == 2
    assert first.page.total_size == 3
    assert first.page.next_page_token
    second = await labs.stub.ListResults(
        pb.ListResultsRequest(
            patient_id="patient-5",
            page=types.PageRequest(page_size=2, page_token=first.page.next_page_token),
        ),
        metadata=labs.clinician_auth,
    )
    assert len(second.results) == 1
    assert second.page.next_page_token == ""
    ids = {r.result_id for r in first.results} | {r.result_id for r in second.results}
    assert len(ids) == 3


async def test_list_results_bad_token(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.ListResults(
            pb.ListResultsRequest(
                patient_id="patient-5", page=types.PageRequest(page_token="%%%")
            ),
            metadata=labs.clinician_auth,
        )
    assert field_violations(caught.value) == ["page.page_token"]


async def test_get_unknown_result(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.GetResult(
            pb.GetResultRequest(result_id="no-such-result"),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_link_unmatched_by_hand(labs: Running) -> None:
    text = (
        "MSH|^~\\&|LIS|LAB1|HIN|HIN|20240301101500||ORU^R01|HAND-LINK-1|P|2.5.1\r"
        "PID|1||NOBODY-1^^^ELSEWHERE^MR\r"
        "OBR|1|P-HAND|F-HAND|2823-3^Potassium^LN\r"
        "OBX|1|NM|2823-3^Potassium^LN||4.4|mmol/L|||||F\r"
    )
    client = await MllpClient.connect(labs.mllp_port)
    assert ack_fields(await client.send(text.encode()))["MSA"][1] == "AA"
    await client.close()
    listing = await labs.stub.ListUnmatchedResults(
        pb.ListUnmatchedResultsRequest(), metadata=labs.clinician_auth
    )
    [item] = [i for i in listing.items if i.message_control_id == "HAND-LINK-1"]

    linked = await labs.stub.LinkUnmatchedResult(
        pb.LinkUnmatchedResultRequest(
            unmatched_id=item.unmatched_id,
            patient_id="patient-6",
            expected_version=item.version,
        ),
        metadata=labs.clinician_auth,
    )
    assert linked.item.state == pb.UnmatchedState.UNMATCHED_STATE_LINKED
    results = await labs.stub.ListResults(
        pb.ListResultsRequest(patient_id="patient-6"), metadata=labs.clinician_auth
    )
    assert [r.value.quantity for r in results.results] == ["4.4"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.LinkUnmatchedResult(
            pb.LinkUnmatchedResultRequest(
                unmatched_id=item.unmatched_id, patient_id="patient-7"
            ),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_import_fhir_lab_observations(labs: Running, shared_data: Path) -> None:
    path = shared_data / "fhir" / "synthea" / SYNTHEA_FILE
    bundle = json.loads(path.read_text())
    patient_ref = next(
        e["fullUrl"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    lab_observations = [
        e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and any(
            c.get("code") == "laboratory"
            for cat in e["resource"].get("category", [])
            for c in cat.get("coding", [])
        )
    ]
    request = pb.ImportFhirRequest(
        bundle=path.read_bytes(),
        resolved_references={patient_ref: "patient-fhir"},
        source=SYNTHEA_FILE,
    )
    first = await labs.stub.ImportFhir(request, metadata=labs.admin_auth)
    imported = [
        o
        for o in first.outcomes
        if o.resource_type == "Observation"
        and o.status == fhir_pb2.FhirImportStatus.FHIR_IMPORT_STATUS_IMPORTED
    ]
    assert len(imported) == len(lab_observations)
    assert len(first.outcomes) == len(bundle["entry"])

    again = await labs.stub.ImportFhir(request, metadata=labs.admin_auth)
    statuses = {
        o.status
        for o in again.outcomes
        if o.resource_type == "Observation"
        and o.source_id in {i.source_id for i in imported}
    }
    assert statuses == {fhir_pb2.FhirImportStatus.FHIR_IMPORT_STATUS_DUPLICATE}

    listing = await labs.stub.ListResults(
        pb.ListResultsRequest(
            patient_id="patient-fhir", page=types.PageRequest(page_size=500)
        ),
        metadata=labs.clinician_auth,
    )
    assert listing.page.total_size == len(lab_observations)
    first_obs = lab_observations[0]["resource"]
    stored = {r.result_id: r for r in listing.results}
    match = stored[imported[0].assigned_id]
    assert match.test.code == first_obs["code"]["coding"][0]["code"]
    assert match.value.unit == first_obs["valueQuantity"]["code"]

    # Every result a DiagnosticReport lists belongs to the order made from it.
    reports = {
        o.source_id: o.assigned_id
        for o in first.outcomes
        if o.resource_type == "DiagnosticReport"
        and o.status == fhir_pb2.FhirImportStatus.FHIR_IMPORT_STATUS_IMPORTED
    }
    by_source = {o.source_id: o.assigned_id for o in imported}
    checked = 0
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if entry["fullUrl"] not in reports:
            continue
        for reference in resource.get("result", []):
            result_id = by_source[reference["reference"]]
            assert stored[result_id].order_id == reports[entry["fullUrl"]]
            checked += 1
    assert checked > 0


async def test_import_fhir_needs_admin_role(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.ImportFhir(
            pb.ImportFhirRequest(bundle=b'{"resourceType": "Bundle", "entry": []}'),
            metadata=labs.clinician_auth,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_import_fhir_rejects_non_bundle(labs: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await labs.stub.ImportFhir(
            pb.ImportFhirRequest(bundle=b'{"resourceType": "Patient"}'),
            metadata=labs.admin_auth,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
