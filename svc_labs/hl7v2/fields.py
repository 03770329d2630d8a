"""Read typed HL7 v2 fields: OBX observations, codings, identifiers, times."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from svc_labs import domain
from svc_labs.hl7v2.er7 import Segment
from svc_labs.hl7v2.errors import (
    CODE_DATA_TYPE_ERROR,
    CODE_REQUIRED_FIELD_MISSING,
    Hl7Error,
)
from svc_labs.hl7v2.timestamps import TimestampError, parse_timestamp

#: HL7 v2 coding system names (table 0396) mapped to FHIR system URIs.
CODING_SYSTEMS: Mapping[str, str] = {
    "LN": domain.LOINC_SYSTEM,
    "LOINC": domain.LOINC_SYSTEM,
    "SCT": domain.SNOMED_SYSTEM,
    "SNM": domain.SNOMED_SYSTEM,
    "UCUM": domain.UCUM_SYSTEM,
}

NUMERIC_TYPES = frozenset({"NM"})
CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
TIME_TYPES = frozenset({"DT", "DTM", "TS"})


def read_observation(
    segment: Segment, *, facility: str, zone: ZoneInfo, default_status: str
) -> events.TestResult | None:
    """Read one OBX into a result, or None when it carries no value yet.

    Raises:
        Hl7Error: OBX-3 is missing, OBX-5 does not match OBX-2, or a coded or
            timestamp field is invalid.
    """
    value_type = segment.component(2).strip().upper()
    raw_value = segment.raw(5)
    status_code = (segment.component(11).strip() or default_status).upper()
    status_code = status_code[:1]
    if not raw_value.strip():
        if status_code != "X":
            return None
    test = read_coding(segment, 3, facility)
    if not test.code:
        raise Hl7Error(
            "observation identifier is required; send the LOINC code of the test",
            code=CODE_REQUIRED_FIELD_MISSING,
            location=segment.location(3),
        )

    result = events.TestResult(test=test)
    if raw_value.strip():
        read_value(segment, value_type, zone, result.value)
    result.value.unit = segment.component(6).strip()
    reference = segment.text(7).strip()
    if reference:
        result.reference_range.CopyFrom(domain.parse_reference_range(reference))
    flag = segment.component(8).strip().upper()
    if flag:
        result.interpretation = domain.INTERPRETATION_CODES.get(
            flag, events.Interpretation.INTERPRETATION_UNSPECIFIED
        )
        result.critical = flag in domain.CRITICAL_INTERPRETATION_CODES
    result.status = domain.RESULT_STATUS_CODES.get(
        status_code, events.ResultStatus.RESULT_STATUS_PRELIMINARY
    )
    observed = optional_time(segment, 14, zone)
    if observed is not None:
        result.effective_at.FromDatetime(observed)
    analyzed = optional_time(segment, 19, zone)
    if analyzed is not None:
        result.issued_at.FromDatetime(analyzed)
    return result


def read_value(
    segment: Segment, value_type: str, zone: ZoneInfo, value: events.ResultValue
) -> None:
    """Fill ``value`` from OBX-5 according to the OBX-2 value type.

    Raises:
        Hl7Error: the value does not match its type, or OBX-2 is missing.
    """
    location = segment.location(5)
    repetitions = segment.repetitions(5)
    if value_type in NUMERIC_TYPES | {"SN"} and len(repetitions) > 1:
        raise Hl7Error(
            f"expected one value for type {value_type}, found {len(repetitions)} "
            "repetitions",
            code=CODE_DATA_TYPE_ERROR,
            location=segment.location(5, repetition=2),
        )
    if value_type in NUMERIC_TYPES:
        text = segment.text(5).strip()
        if not domain.is_decimal(text):
            raise Hl7Error(
                "expected a decimal number for value type NM",
                code=CODE_DATA_TYPE_ERROR,
                location=location,
            )
        value.quantity = text
    elif value_type == "SN":
        _read_structured_numeric(segment, value)
    elif value_type in CODED_TYPES:
        coding = read_coding(segment, 5, "")
        value.coded.codings.append(coding)
        value.coded.text = coding.display
    elif value_type in TIME_TYPES:
        text = segment.text(5).strip()
        try:
            parse_timestamp(text, zone)
        except TimestampError as exc:
            raise Hl7Error(
                f"{exc} for value type {value_type}",
                code=CODE_DATA_TYPE_ERROR,
                location=location,
            ) from None
        value.text = text
    elif value_type:
        # Every other type (ST, TX, FT, ID, RP, ED, XAD, ...) is kept as text.
        value.text = segment.text(5)
    else:
        raise Hl7Error(
            "value type is required when OBX-5 has a value",
            code=CODE_REQUIRED_FIELD_MISSING,
            location=segment.location(2),
        )


def _read_structured_numeric(segment: Segment, value: events.ResultValue) -> None:
    comparator, number, separator, second = (segment.components(5) + ["", "", "", ""])[
        :4
    ]
    comparator, number = comparator.strip(), number.strip()
    if comparator not in ("", "<", ">", "<=", ">=", "=", "<>") or not domain.is_decimal(
        number
    ):
        raise Hl7Error(
            "expected a structured numeric such as >^11.0 or ^1^:^128 for value "
            "type SN",
            code=CODE_DATA_TYPE_ERROR,
            location=segment.location(5),
        )
    if second.strip():
        # A ratio or range (1:128, 2-5) is not one quantity, so it stays text.
        value.text = f"{comparator}{number}{separator}{second.strip()}"
        return
    value.quantity = number
    if comparator not in ("", "="):
        value.comparator = comparator


def read_coding(segment: Segment, field_number: int, facility: str) -> types.Coding:
    """Read a CE/CWE field, preferring a LOINC coding in the alternate triplet.

    The alternate triplet is also used when the primary code is empty.

    A code from a local or unnamed system gets the system
    ``urn:hin:hl7v2:codesystem:<name>``; an unnamed local system is scoped
    to the sending facility.
    """
    parts = segment.components(field_number) + [""] * 6
    primary = (parts[0].strip(), parts[1].strip(), parts[2].strip())
    alternate = (parts[3].strip(), parts[4].strip(), parts[5].strip())
    alternate_is_loinc = alternate[2].upper() in ("LN", "LOINC")
    chosen = primary
    if not primary[0] or (
        alternate[0]
        and alternate_is_loinc
        and primary[2].upper() not in ("LN", "LOINC")
    ):
        chosen = alternate if alternate[0] else primary
    code, display, system_name = chosen
    if not code and not display:
        return types.Coding()
    return types.Coding(
        system=coding_system(system_name, facility),
        code=code,
        display=display,
    )


def coding_system(name: str, facility: str) -> str:
    """Map an HL7 v2 coding system name to a system URI."""
    known = CODING_SYSTEMS.get(name.upper())
    if known:
        return known
    if name:
        return f"urn:hin:hl7v2:codesystem:{name}"
    return f"urn:hin:hl7v2:codesystem:local:{facility}"


def read_patient_identifiers(
    pid: Segment, systems: Mapping[str, str]
) -> list[types.Identifier]:
    """Read PID-3 repetitions into identifiers.

    The system is the one configured for the assigning authority (PID-3.4,
    namespace id or universal id), else ``urn:hin:hl7v2:authority:<name>``,
    else empty when no authority was sent.

    Raises:
        Hl7Error: PID-3 is empty.
    """
    identifiers: list[types.Identifier] = []
    for repetition in range(1, len(pid.repetitions(3)) + 1):
        value = pid.component(3, 1, repetition).strip()
        if not value:
            continue
        authority = pid.subcomponents(3, 4, repetition) + ["", ""]
        namespace, universal = authority[0].strip(), authority[1].strip()
        system = systems.get(namespace) or systems.get(universal) or ""
        if not system and (namespace or universal):
            system = f"urn:hin:hl7v2:authority:{namespace or universal}"
        identifiers.append(
            types.Identifier(
                system=system,
                value=value,
                type_code=pid.component(3, 5, repetition).strip().upper(),
            )
        )
    if not identifiers:
        raise Hl7Error(
            "patient identifier list is required; send at least one identifier "
            "such as the MRN",
            code=CODE_REQUIRED_FIELD_MISSING,
            location=pid.location(3),
        )
    return identifiers


def optional_time(
    segment: Segment, field_number: int, zone: ZoneInfo
) -> datetime | None:
    """Parse a timestamp field, or return None when it is empty.

    Raises:
        Hl7Error: the field is not a valid DTM value.
    """
    text = segment.component(field_number).strip()
    if not text:
        return None
    try:
        return parse_timestamp(text, zone)
    except TimestampError as exc:
        raise Hl7Error(
            str(exc),
            code=CODE_DATA_TYPE_ERROR,
            location=segment.location(field_number),
        ) from None
