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


def test_admit_rejects_huge_ward() -> None:
    request = pb.AdmitRequest(
        patient_id="patient-1",
        organization_id="org-1",
        ward="W" * (1 << 20),
        emergency=True,
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.admit(request)

    assert violated_fields(caught.value) == {"ward"}


def test_admit_rejects_long_organization_id() -> None:
    request = pb.AdmitRequest(
        patient_id="patient-1",
        organization_id="o" * 100_000,
        ward="ICU",
        emergency=True,
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.admit(request)

    assert violated_fields(caught.value) == {"organization_id"}


def test_admit_rejects_huge_care_team() -> None:
    request = pb.AdmitRequest(
        patient_id="patient-1",
        organization_id="org-1",
        ward="ICU",
        emergency=True,
        care_team_practitioner_ids=[f"practitioner-{i}" for i in range(20_000)],
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.admit(request)

    assert violated_fields(caught.value) == {"care_team_practitioner_ids"}


def test_admit_accepts_ordinary_care_team() -> None:
    request = pb.AdmitRequest(
        patient_id="patient-1",
        organization_id="org-1",
        ward="ICU",
        emergency=True,
        care_team_practitioner_ids=["practitioner-1", "practitioner-2"],
    )

    admission = requests.admit(request)

    assert admission.care_team_practitioner_ids == ["practitioner-1", "practitioner-2"]


def test_book_rejects_long_location_id() -> None:
    request = pb.BookRequest(
        patient_id="patient-1",
        practitioner_id="practitioner-1",
        period=types_pb2.Period(start=stamp(FUTURE_TIME), end=stamp(FUTURE_TIME + 900)),
        location_id="L" * (1 << 20),
    )

    with pytest.raises(InvalidArgument) as caught:
        requests.book(request)

    assert violated_fields(caught.value) == {"location_id"}
