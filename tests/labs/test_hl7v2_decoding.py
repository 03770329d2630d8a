"""ER7 decoding, message reading and ACK building, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from hin.labs.v1 import events_pb2 as events
from svc_labs.hl7v2 import ack
from svc_labs.hl7v2.er7 import Delimiters, decode, decode_header, unescape
from svc_labs.hl7v2.errors import Hl7Error
from svc_labs.hl7v2.messages import (
    ReadingRules,
    check_header,
    read_body,
    read_header,
)
from svc_labs.hl7v2.timestamps import TimestampError, parse_timestamp

CAIRO = ZoneInfo("Africa/Cairo")
RULES = ReadingRules(facility_zones={}, default_zone=CAIRO, identifier_systems={})
STANDARD = Delimiters()

MESSAGE = (
    "MSH|^~\\&|LIS|LAB1|HIN|HIN|20240301101500||ORU^R01|C1|P|2.5.1\r"
    "PID|1||MRN-1^^^HOSP^MR~29001011234567^^^EG^NI\r"
    "OBR|1|P1|F1|24323-8^Panel^LN\r"
    "OBX|1|NM|2823-3^Potassium^LN||6.9|mmol/L|3.5-5.0|HH|||F|||20240301090000+0200\r"
    "NTE|1|L|comment\r"
    "OBX|2|SN|5048-4^ANA titer^LN||>^11.0|||A|||P\r"
    "OBX|3|CWE|600-7^Culture^LN||27268008^Salmonella^SCT||||||F\r"
    "OBX|4|NM|2951-2^Sodium^LN||||||||I\r"
)


def read(text: str | bytes) -> list[events.TestResult]:
    data = text.encode() if isinstance(text, str) else text
    header = read_header(decode_header(data))
    check_header(header)
    body = read_body(decode(data), header, RULES)
    return [r for p in body.patients for o in p.orders for r in o.results]


def test_reads_values_by_type() -> None:
    potassium, titer, culture = read(MESSAGE)
    assert potassium.value.quantity == "6.9"
    assert potassium.value.unit == "mmol/L"
    assert (
        potassium.interpretation == events.Interpretation.INTERPRETATION_CRITICAL_HIGH
    )
    assert potassium.critical is True
    assert list(potassium.notes) == ["comment"]
    assert titer.value.quantity == "11.0"
    assert titer.value.comparator == ">"
    assert titer.status == events.ResultStatus.RESULT_STATUS_PRELIMINARY
    assert culture.value.coded.codings[0].code == "27268008"
    assert culture.value.coded.codings[0].system == "http://snomed.info/sct"


def test_pending_obx_without_value_skipped() -> None:
    codes = [r.test.code for r in read(MESSAGE)]
    assert "2951-2" not in codes


def test_patient_identifiers_from_pid3() -> None:
    data = MESSAGE.encode()
    header = read_header(decode_header(data))
    rules = ReadingRules({}, CAIRO, {"HOSP": "urn:hin:id:mrn:org-9"})
    [patient] = read_body(decode(data), header, rules).patients
    mrn, national = patient.identifiers
    assert (mrn.system, mrn.value, mrn.type_code) == (
        "urn:hin:id:mrn:org-9",
        "MRN-1",
        "MR",
    )
    assert national.system == "urn:hin:hl7v2:authority:EG"
    assert national.type_code == "NI"


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b\\T\\c\\R\\d\\E\\e", "a^b&c~d\\e"),
        ("line\\.br\\next", "line\nnext"),
        ("caf\\X00E9\\", "café"),
        ("one\\X0D\\\\X0A\\two", "one\ntwo"),
        ("\\H\\bold\\N\\", "bold"),
        ("no end \\F", "no end \\F"),
        ("unknown \\Q\\ kept", "unknown \\Q\\ kept"),
    ],
)
def test_unescape(raw: str, expected: str) -> None:
    assert unescape(raw, STANDARD) == expected


def test_latin1_charset_decoded() -> None:
    text = MESSAGE.replace("2.5.1\r", "2.5.1||||||8859/1\r").replace(
        "comment", "Ørsted-Ñúñez"
    )
    [potassium, *_] = read(text.encode("latin-1"))
    assert list(potassium.notes) == ["Ørsted-Ñúñez"]


def test_invalid_utf8_without_charset_is_error() -> None:
    data = MESSAGE.replace("comment", "Ørsted").encode("latin-1")
    with pytest.raises(Hl7Error) as caught:
        read(data)
    assert caught.value.reject is False


def test_unknown_charset_rejected() -> None:
    text = MESSAGE.replace("2.5.1\r", "2.5.1||||||KLINGON\r")
    with pytest.raises(Hl7Error) as caught:
        read(text)
    assert caught.value.reject is True
    assert caught.value.location is not None
    assert caught.value.location.field == 18


def test_message_without_line_breaks() -> None:
    assert len(read(MESSAGE.replace("\r", " "))) == 3


def test_mixed_terminators() -> None:
    text = MESSAGE.replace("\r", "\r\n", 2).replace(
        "NTE|1|L|comment\r", "NTE|1|L|comment\n"
    )
    assert len(read(text)) == 3


def test_bare_lf_continues_nte() -> None:
    text = MESSAGE.replace("NTE|1|L|comment", "NTE|1|L|first\nsecond")
    [potassium, *_] = read(text)
    assert list(potassium.notes) == ["first\nsecond"]


def test_line_starting_with_separator_rejected() -> None:
    with pytest.raises(Hl7Error) as caught:
        read(MESSAGE + "|||\r")
    assert caught.value.code == 100


def test_missing_escape_character() -> None:
    text = MESSAGE.replace("MSH|^~\\&|", "MSH|^~&|").replace("comment", "a\\b")
    [potassium, *_] = read(text)
    assert list(potassium.notes) == ["a\\b"]


def test_bad_nm_names_obx() -> None:
    text = MESSAGE.replace("||6.9|", "||abc|")
    with pytest.raises(Hl7Error) as caught:
        read(text)
    assert caught.value.user_message.startswith("OBX #1 OBX-5:")


def test_bad_timestamp_names_field() -> None:
    text = MESSAGE.replace("20240301090000+0200", "20241301")
    with pytest.raises(Hl7Error) as caught:
        read(text)
    assert caught.value.user_message.startswith("OBX #1 OBX-14:")


def test_unsupported_type_rejected() -> None:
    text = MESSAGE.replace("ORU^R01", "SIU^S12")
    with pytest.raises(Hl7Error) as caught:
        read(text)
    assert caught.value.reject is True
    assert caught.value.code == 200


@pytest.mark.parametrize(
    "text,expected",
    [
        ("20240301101500-0330", datetime(2024, 3, 1, 13, 45, tzinfo=UTC)),
        ("20240301101500+0000", datetime(2024, 3, 1, 10, 15, tzinfo=UTC)),
        ("20240301101500", datetime(2024, 3, 1, 8, 15, tzinfo=UTC)),
        ("20240801101500", datetime(2024, 8, 1, 7, 15, tzinfo=UTC)),
        ("202403011015", datetime(2024, 3, 1, 8, 15, tzinfo=UTC)),
        ("20240301", datetime(2024, 2, 29, 22, 0, tzinfo=UTC)),
        ("20240301101500.25+0100", datetime(2024, 3, 1, 9, 15, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    # Cairo is UTC+2 in winter and UTC+3 under summer time (from late April).
    assert parse_timestamp(text, CAIRO).astimezone(UTC) == expected


def test_timestamp_keeps_offset() -> None:
    parsed = parse_timestamp("20240301101500-0330", CAIRO)
    assert parsed.utcoffset() == -timedelta(hours=3, minutes=30)
    assert parsed.tzinfo == timezone(-timedelta(hours=3, minutes=30))


@pytest.mark.parametrize(
    "text", ["February 2 2024", "2024-03-01", "20241301", "2024030125"]
)
def test_invalid_timestamps(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(text, CAIRO)


def test_ack_error_segment() -> None:
    data = MESSAGE.replace("||6.9|", "||abc|").encode()
    header = read_header(decode_header(data))
    with pytest.raises(Hl7Error) as caught:
        read(data)
    built = ack.build_ack(
        header,
        code=ack.ERROR,
        control_id="ACK-1",
        now=datetime(2024, 3, 1, tzinfo=UTC),
        error=caught.value,
    ).decode()
    msh, msa, err = built.rstrip("\r").split("\r")
    assert msh.split("|")[2:6] == ["HIN", "HIN", "LIS", "LAB1"]
    assert msh.split("|")[8] == "ACK^R01^ACK"
    assert msa.split("|")[:3] == ["MSA", "AE", "C1"]
    assert err.split("|")[2] == "OBX^1^5^1"
    assert err.split("|")[3] == "102^Data type error^HL70357"
    assert err.split("|")[4] == "E"


def test_hl7_package_splits_on_cr_only() -> None:
    # The hl7 package (0.4.5) splits segments on CR only, which is why the
    # listener has a decoder of its own for LF and unbroken messages.
    import hl7

    parsed = hl7.parse(MESSAGE.replace("\r", "\n"))
    assert len(parsed) == 1
    assert len(decode(MESSAGE.replace("\r", "\n").encode()).segments) == 8
