"""Request validation of AppointmentsService for values a client can send."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.common.v1 import types_pb2
from mesh.runtime.errors import InvalidArgument
from svc_appointments import requests

FUTURE_TIME = 1_801_040_400  # seconds since the epoch, in 2027


def stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def violated_fields(error: InvalidArgument) -> set[str]:
    return {violation.field for violation in error.violations}


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (stamp(2**62), stamp(2**62 + 600), "period.start"),
        (stamp(-(2**62)), stamp(FUTURE_TIME), "period.start"),
        (stamp(FUTURE_TIME), stamp(FUTURE_TIME + 600, nanos=-5), "period.end"),
        (stamp(253_402_300_000), stamp(253_402_300_500), "period.end"),
    ],
)
def test_book_rejects_invalid_timestamp(start, end, field):
    request = pb.BookRequest(
        patient_id="patient-1",
        practitioner_id="practitioner-1",
        period=types_pb2.Period(start=start, end=end),
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.book(request)

    assert field in violated_fields(caught.value)


def test_find_slots_rejects_invalid_window():
    request = pb.FindSlotsRequest(
        practitioner_id="practitioner-1",
        window=types_pb2.Period(start=stamp(2**62), end=stamp(2**62 + 600)),
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.find_slots(request)

    assert violated_fields(caught.value) == {"window.start", "window.end"}


@pytest.mark.parametrize("token", ["99999999999999999999999999", "²", "٣"])
def test_page_token_rejects_non_offset(token):
    request = pb.ListAppointmentsRequest(
        patient_id="patient-1", page=types_pb2.PageRequest(page_token=token)
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.list_appointments(request)

    assert violated_fields(caught.value) == {"page.page_token"}


def test_page_token_accepts_offset():
    request = pb.ListAppointmentsRequest(
        patient_id="patient-1", page=types_pb2.PageRequest(page_token="100")
    )

    _, offset, _ = requests.list_appointments(request)

    assert offset == 100
