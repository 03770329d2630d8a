"""Size, control-character and timestamp checks on patient demographics."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from mesh.runtime.validation import Violations
from svc_records.domain.patients import validate_demographics

#: Maximum text length and maximum entries of a repeated field the service accepts.
MAX_TEXT_LENGTH = 200
MAX_REPEATED = 10


def violations_of(patient: pb.PatientDemographics) -> dict[str, str]:
    violations = Violations()
    validate_demographics(patient, "patient", violations)
    return {item.field: item.description for item in violations.items}


def patient(family: str = "Hassan", **fields: object) -> pb.PatientDemographics:
    return pb.PatientDemographics(
        names=[types_pb2.HumanName(family=family, given=["Omar"])],
        birth_date=types_pb2.Date(year=1980, month=5, day=17),
        **fields,  # type: ignore[arg-type]
    )


def test_ordinary_patient_is_valid() -> None:
    assert violations_of(patient("عبد الله")) == {}


def test_long_family_name_is_rejected() -> None:
    found = violations_of(patient("A" * (1 << 20)))

    assert "patient.names[0].family" in found
    assert f"at most {MAX_TEXT_LENGTH}" in found["patient.names[0].family"]


def test_longest_family_name_is_accepted() -> None:
    assert violations_of(patient("A" * MAX_TEXT_LENGTH)) == {}


def test_many_names_are_rejected() -> None:
    many = patient()
    for index in range(20_000):
        many.names.add(family=f"N{index}")

    found = violations_of(many)

    assert "patient.names" in found
    assert f"at most {MAX_REPEATED}" in found["patient.names"]


def test_most_names_are_accepted() -> None:
    names = [types_pb2.HumanName(family=f"N{index}") for index in range(MAX_REPEATED)]

    assert violations_of(pb.PatientDemographics(names=names)) == {}


def test_long_identifier_value_is_rejected() -> None:
    identifier = types_pb2.Identifier(
        system="urn:hin:id:mrn:hosp-a", value="x" * 100_000
    )

    found = violations_of(patient(identifiers=[identifier]))

    assert "patient.identifiers[0].value" in found


def test_long_address_line_is_rejected() -> None:
    address = types_pb2.Address(lines=["ok", "y" * 5000])

    found = violations_of(patient(addresses=[address]))

    assert "patient.addresses[0].lines[1]" in found


def test_nul_in_name_is_rejected() -> None:
    found = violations_of(patient("Ha\x00ssan"))

    assert found == {"patient.names[0].family": "contains a control character"}


def test_invalid_deceased_at_is_rejected() -> None:
    dead = patient(deceased=True, deceased_at=Timestamp(seconds=2**62))

    found = violations_of(dead)

    assert "patient.deceased_at" in found
