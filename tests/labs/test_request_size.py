"""Size limit of LabsService write requests, which each become one event."""

from __future__ import annotations

import pytest

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from mesh.runtime.errors import InvalidArgument
from svc_labs import requests

LOINC = "http://loinc.org"
#: Far above the accepted size and above the producer's default record limit.
ONE_MEGABYTE = 1 << 20


def result(
    value: events.ResultValue, display: str = "Potassium"
) -> pb.RecordResultRequest:
    return pb.RecordResultRequest(
        order_id="order-1",
        test=types.Coding(system=LOINC, code="2823-3", display=display),
        value=value,
        status=events.ResultStatus.RESULT_STATUS_FINAL,
    )


def violated_fields(error: InvalidArgument) -> set[str]:
    return {violation.field for violation in error.violations}


def test_record_result_rejects_huge_text() -> None:
    request = result(events.ResultValue(text="X" * ONE_MEGABYTE))

    with pytest.raises(InvalidArgument) as caught:
        requests.check_record_result(request)

    assert violated_fields(caught.value) == {"value"}


def test_record_result_rejects_huge_display() -> None:
    request = result(events.ResultValue(quantity="6.9"), display="K" * ONE_MEGABYTE)

    with pytest.raises(InvalidArgument) as caught:
        requests.check_record_result(request)

    assert violated_fields(caught.value) == {"test"}


def test_record_result_accepts_long_report_text() -> None:
    request = result(events.ResultValue(text="Narrative line.\n" * 4000))

    requests.check_record_result(request)


def test_place_order_rejects_many_tests() -> None:
    tests = [
        types.Coding(system=LOINC, code="2823-3", display="D" * 1000)
        for _ in range(1000)
    ]
    request = pb.PlaceOrderRequest(
        patient_id="patient-1", ordering_practitioner_id="dr-1", tests=tests
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.check_place_order(request, "")

    assert violated_fields(caught.value) == {"tests"}


def test_correct_result_rejects_huge_reason() -> None:
    request = pb.CorrectResultRequest(
        result_id="result-1",
        expected_version=1,
        value=events.ResultValue(quantity="5.1"),
        reason="r" * ONE_MEGABYTE,
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.check_correct_result(request)

    assert violated_fields(caught.value) == {"reason"}


def test_long_id_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        requests.check_id("x" * 10_000, "result_id")

    assert violated_fields(caught.value) == {"result_id"}
