"""HL7 v2 over MLLP against the real listener, database and broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import hl7
import pytest
from sqlalchemy import func
from sqlmodel import select

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from hin.records.v1 import events_pb2 as records_events
from svc_labs.store import InboundMessageRow, OrderRow, ResultRow, UnmatchedRow

from .conftest import (
    MllpClient,
    Running,
    TopicReader,
    ack_fields,
    publish_records_event,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: ACK code per shared file, decided by reading each file. Other message types
#: and a broken MSH get AR. A supported message with an invalid field gets AE.
EXPECTED_ACK = {
    "malformed_adt_a07_nhapi_2.hl7": "AR",  # MSH-2 contains a non-ASCII byte
    "malformed_adt_a44_nhapi_1.hl7": "AR",  # MSH-18 is not a character set
    "malformed_orm_o01_cdcti_1.hl7": "AR",  # MSH-2 missing
    "adt_a01_lfh_unix.hl7": "AR",  # MSH-2 "^~\\&" repeats the escape character
    "adt_a01_lfh_win.hl7": "AR",
    "oml_o21_nhapi_1.hl7": "AR",  # MSH-10 empty
    "oru_r03_rubyhl7_1.hl7": "AR",  # trigger R03
    "oml_o21_fhirconv_1.hl7": "AE",  # NM value with two repetitions
    "orm_o01_fhirconv_1.hl7": "AE",  # NM value with two repetitions
    "orm_o01_cdcti_1.hl7": "AE",  # DTM value "February 2 2024"
    "orm_o01_cdcti_2.hl7": "AE",  # ORC-1 "CD:2539" is no order control code
    "oru_r01_fhirconv_1.hl7": "AE",  # OBX before any OBR
    "oru_r01_lfh_1.hl7": "AE",  # OBX-3 empty
    "oml_o21_cdcti_1.hl7": "AA",
    "orm_o01_efferent_1.hl7": "AA",
    "orm_o01_fhirconv_2.hl7": "AA",
    "orm_o01_rubyhl7_1.hl7": "AA",
}
#: ORU^R01 files that are well formed and must be stored.
WELL_FORMED_ORU = [
    "oru_r01_cdcti_1.hl7",
    "oru_r01_cdcti_2.hl7",
    "oru_r01_cdcti_3.hl7",
    "oru_r01_fhirconv_2.hl7",
    "oru_r01_fhirconv_3.hl7",
    "oru_r01_nodehl7_1.hl7",
    "oru_r01_pipehat_1.hl7",
    "oru_r01_pipehat_2.hl7",
    "oru_r01_rubyhl7_1.hl7",
    "oru_r01_rubyhl7_2.hl7",
    "oru_r01_rubyhl7_3.hl7",
    "oru_r01_rubyhl7_4.hl7",
]
UNSUPPORTED_PREFIXES = ("adt_", "siu_", "dft_", "bar_", "erp_", "malformed_adt")

FLAG_TO_INTERPRETATION = {
    "": events.Interpretation.INTERPRETATION_UNSPECIFIED,
    "N": events.Interpretation.INTERPRETATION_NORMAL,
    "H": events.Interpretation.INTERPRETATION_HIGH,
    "L": events.Interpretation.INTERPRETATION_LOW,
    "HH": events.Interpretation.INTERPRETATION_CRITICAL_HIGH,
    "LL": events.Interpretation.INTERPRETATION_CRITICAL_LOW,
    "A": events.Interpretation.INTERPRETATION_ABNORMAL,
}


def expected_ack(name: str) -> str:
    if name in EXPECTED_ACK:
        return EXPECTED_ACK[name]
    if name in WELL_FORMED_ORU:
        return "AA"
    assert name.startswith(UNSUPPORTED_PREFIXES), name
    return "AR"


def parse_with_hl7(path: Path) -> hl7.Message:
    """Parse a file with the hl7 package after normalizing it independently."""
    text = path.read_bytes().decode("utf-8-sig")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return hl7.parse(text)


def expected_observations(message: hl7.Message) -> list[tuple[str, str, str, str]]:
    """(value type, OBX-5, OBX-6.1, OBX-8.1) of every OBX that carries a value."""
    rows = []
    try:
        segments = message.segments("OBX")
    except KeyError:  # the hl7 package raises when a segment id is absent
        segments = []
    for obx in segments:
        if not str(obx[5]).strip():
            continue
        unit = message.unescape(
            obx.extract_field(field_num=6, repeat_num=1, component_num=1)
        )
        flag = obx.extract_field(field_num=8, repeat_num=1, component_num=1)
        rows.append((str(obx[2]).strip().upper(), str(obx[5]).strip(), unit, flag))
    return rows


def count_rows(labs: Running) -> tuple[int, int, int, int]:
    with labs.host.db.transaction() as session:
        return tuple(  # type: ignore[return-value]
            session.exec(select(func.count()).select_from(table)).one()
            for table in (ResultRow, OrderRow, UnmatchedRow, InboundMessageRow)
        )


async def unmatched_of(labs: Running, control_id: str) -> list[pb.UnmatchedResult]:
    response = await labs.stub.ListUnmatchedResults(
        pb.ListUnmatchedResultsRequest(
            page=types.PageRequest(page_size=500), include_linked=True
        ),
        metadata=labs.clinician_auth,
    )
    return [i for i in response.items if i.message_control_id == control_id]


@pytest.fixture(scope="module")
def hl7_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "hl7v2").glob("*.hl7"))


async def test_every_shared_file_acknowledged(
    labs: Running, hl7_files: list[Path]
) -> None:
    client = await MllpClient.connect(labs.mllp_port)
    try:
        for path in hl7_files:
            before = count_rows(labs)[:3]
            ack = ack_fields(await client.send(path.read_bytes()))
            code = ack["MSA"][1]
            assert code == expected_ack(path.name), (path.name, ack.get("ERR"))
            if code != "AA":
                assert "ERR" in ack, path.name
                assert ack["ERR"][8], path.name
                assert count_rows(labs)[:3] == before, path.name
    finally:
        await client.close()


async def test_well_formed_oru_results_match_hl7_package(
    labs: Running, hl7_files: list[Path]
) -> None:
    # Send the files again so that this test does not depend on the one above.
    # A resend stores nothing, so the stored results are the same either way.
    client = await MllpClient.connect(labs.mllp_port)
    try:
        for path in hl7_files:
            if path.name in WELL_FORMED_ORU:
                await client.send(path.read_bytes())
    finally:
        await client.close()

    for name in WELL_FORMED_ORU:
        message = parse_with_hl7(hl7_files[0].parent / name)
        control_id = str(message.segment("MSH")[10]).strip()
        expected = expected_observations(message)
        items = await unmatched_of(labs, control_id)
        results = [r for item in items for r in item.results]
        assert len(results) == len(expected), name
        for result, (value_type, value, unit, flag) in zip(
            results, expected, strict=True
        ):
            assert result.value.unit == unit.strip(), name
            assert result.interpretation == FLAG_TO_INTERPRETATION.get(
                flag.upper(), events.Interpretation.INTERPRETATION_UNSPECIFIED
            ), name
            if value_type == "NM":
                assert result.value.quantity == value, name


async def test_resend_stores_nothing_new(labs: Running, hl7_files: list[Path]) -> None:
    client = await MllpClient.connect(labs.mllp_port)
    try:
        first = {}
        for path in hl7_files:
            first[path.name] = ack_fields(await client.send(path.read_bytes()))["MSA"][
                1
            ]
        before = count_rows(labs)
        for path in hl7_files:
            again = ack_fields(await client.send(path.read_bytes()))["MSA"][1]
            assert again == first[path.name], path.name
        assert count_rows(labs) == before
    finally:
        await client.close()


async def test_listener_serves_after_malformed(
    labs: Running, hl7_files: list[Path]
) -> None:
    for path in hl7_files:
        if not path.name.startswith("malformed_"):
            continue
        client = await MllpClient.connect(labs.mllp_port)
        ack = ack_fields(await client.send(path.read_bytes()))
        assert ack["MSA"][1] in ("AE", "AR"), path.name
        await client.close()
    client = await MllpClient.connect(labs.mllp_port)
    good = hl7_files[0].parent / "oru_r01_cdcti_1.hl7"
    assert ack_fields(await client.send(good.read_bytes()))["MSA"][1] == "AA"
    await client.close()


def oru(
    control_id: str,
    observations: list[str],
    *,
    facility: str = "LAB1",
    pid3: str = "MRN-UNKNOWN^^^OTHER_HOSP^MR",
    charset: str = "",
    terminator: str = "\r",
) -> str:
    """Build an ORU^R01 with one OBR and the given OBX segments."""
    msh = (
        f"MSH|^~\\&|LIS|{facility}|HIN|HIN|20240301101500||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5.1"
    )
    if charset:
        msh += f"||||||{charset}"
    segments = [
        msh,
        f"PID|1||{pid3}||Test^Patient",
        "ORC|RE|PLACER-" + control_id + "|FILLER-" + control_id,
        "OBR|1|PLACER-"
        + control_id
        + "|FILLER-"
        + control_id
        + "|24323-8^Comprehensive metabolic panel^LN|||20240301090000",
        *observations,
    ]
    return terminator.join(segments) + terminator


def nm_obx(index: int, value: str, code: str = "2951-2", unit: str = "mmol/L") -> str:
    return f"OBX|{index}|NM|{code}^Analyte {index}^LN||{value}|{unit}|||||F"


async def test_fifty_obx_with_bad_17_stores_nothing(labs: Running) -> None:
    observations = [
        nm_obx(i, "abc" if i == 17 else f"{130 + i % 10}") for i in range(1, 51)
    ]
    before = count_rows(labs)[:3]
    client = await MllpClient.connect(labs.mllp_port)
    ack = ack_fields(await client.send(oru("BATCH-50", observations).encode()))
    await client.close()

    assert ack["MSA"][1] == "AE"
    assert ack["ERR"][2] == "OBX^17^5^1"
    assert ack["ERR"][3].startswith("102^")
    assert ack["ERR"][8].startswith("OBX #17 OBX-5:")
    assert count_rows(labs)[:3] == before


async def test_latin1_name_and_hex_escape(labs: Running) -> None:
    text = oru(
        "LATIN1-1",
        [
            "OBX|1|ST|18771-6^Reviewed by^LN||Ørsted-Ñúñez||||||F",
            "NTE|1|L|caf\\X00E9\\ line one\\X0D\\\\X0A\\line two \\T\\ more",
        ],
        charset="8859/1",
    )
    client = await MllpClient.connect(labs.mllp_port)
    ack = ack_fields(await client.send(text.encode("latin-1")))
    await client.close()
    assert ack["MSA"][1] == "AA"

    [item] = await unmatched_of(labs, "LATIN1-1")
    [result] = item.results
    assert result.value.text == "Ørsted-Ñúñez"
    assert list(result.notes) == ["café line one\nline two & more"]


async def test_timestamps_offset_and_zone(labs: Running) -> None:
    observations = [
        "OBX|1|NM|2951-2^Sodium^LN||140|mmol/L|||||F|||20240301101500-0330",
        "OBX|2|NM|2951-2^Sodium^LN|2|141|mmol/L|||||F|||20240301101500",
    ]
    client = await MllpClient.connect(labs.mllp_port)
    assert (
        ack_fields(await client.send(oru("TZ-CAIRO", observations).encode()))["MSA"][1]
        == "AA"
    )
    ny = oru("TZ-NY", observations, facility="LAB_NY")
    assert ack_fields(await client.send(ny.encode()))["MSA"][1] == "AA"
    await client.close()

    [cairo_item] = await unmatched_of(labs, "TZ-CAIRO")
    offset, local = cairo_item.results
    # 10:15 at -03:30 is 13:45 UTC; 10:15 in Cairo (UTC+2 in March) is 08:15.
    assert offset.effective_at.ToDatetime(tzinfo=UTC) == datetime(
        2024, 3, 1, 13, 45, tzinfo=UTC
    )
    assert local.effective_at.ToDatetime(tzinfo=UTC) == datetime(
        2024, 3, 1, 8, 15, tzinfo=UTC
    )
    [ny_item] = await unmatched_of(labs, "TZ-NY")
    # New York is UTC-5 on 1 March 2024 (EST).
    assert ny_item.results[1].effective_at.ToDatetime(tzinfo=UTC) == datetime(
        2024, 3, 1, 15, 15, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "terminator,prefix",
    [("\r", b""), ("\n", b""), ("\r\n", b""), ("\r", b"\xef\xbb\xbf"), (" ", b"")],
    ids=["cr", "lf", "crlf", "bom", "no-line-breaks"],
)
async def test_terminators_and_bom(
    labs: Running, terminator: str, prefix: bytes
) -> None:
    control_id = f"TERM-{len(terminator)}-{terminator.encode().hex()}-{len(prefix)}"
    text = oru(
        control_id,
        [
            nm_obx(1, "139"),
            "NTE|1|L|two words",
            nm_obx(2, "4.1", "2823-3"),
            "ZXT|1|custom",
        ],
        terminator=terminator,
    )
    client = await MllpClient.connect(labs.mllp_port)
    ack = ack_fields(await client.send(prefix + text.encode()))
    await client.close()
    assert ack["MSA"][1] == "AA"
    [item] = await unmatched_of(labs, control_id)
    assert [r.value.quantity for r in item.results] == ["139", "4.1"]
    assert list(item.results[0].notes) == ["two words"]


async def test_bare_lf_inside_nte_continues_it(labs: Running) -> None:
    text = oru("BARE-LF", [nm_obx(1, "139"), "NTE|1|L|first line\nsecond line"])
    client = await MllpClient.connect(labs.mllp_port)
    assert ack_fields(await client.send(text.encode()))["MSA"][1] == "AA"
    await client.close()
    [item] = await unmatched_of(labs, "BARE-LF")
    assert list(item.results[0].notes) == ["first line\nsecond line"]


async def test_non_default_delimiters(labs: Running) -> None:
    text = (
        "MSH#$%*@#LIS#LAB1#HIN#HIN#20240301101500##ORU$R01#DELIM-1#P#2.5.1\r"
        "PID#1##MRN-9$$$OTHER$MR\r"
        "OBR#1#P-DELIM#F-DELIM#2823-3$Potassium$LN\r"
        "OBX#1#NM#2823-3$Potassium$LN##4.2#mmol/L#3.5-5.0#N#####F\r"
        "OBX#2#ST#8251-1$Note$LN##a*F*b*S*c#####F\r"
    )
    client = await MllpClient.connect(labs.mllp_port)
    assert ack_fields(await client.send(text.encode()))["MSA"][1] == "AA"
    await client.close()
    [item] = await unmatched_of(labs, "DELIM-1")
    potassium, note = item.results
    assert potassium.value.quantity == "4.2"
    assert potassium.reference_range.low == "3.5"
    assert potassium.reference_range.high == "5.0"
    assert note.value.text == "a#b$c"


async def test_unsupported_type_gets_reason(labs: Running) -> None:
    text = "MSH|^~\\&|A|LAB1|B|C|20240301||ADT^A01|ADT-1|P|2.5\rPID|1||X^^^Y^MR\r"
    client = await MllpClient.connect(labs.mllp_port)
    ack = ack_fields(await client.send(text.encode()))
    await client.close()
    assert ack["MSA"][1] == "AR"
    assert ack["ERR"][3].startswith("200^")
    assert "unsupported message type ADT" in ack["ERR"][8]


async def test_critical_potassium_published(
    labs: Running, kafka_bootstrap: str
) -> None:
    labs.register_patient(
        "patient-k",
        [
            types.Identifier(
                system="urn:hin:id:mrn:org-1", value="MRN-K1", type_code="MR"
            )
        ],
    )
    text = oru(
        "K-CRIT-1",
        [nm_obx(1, "6.9", "2823-3")],
        pid3="MRN-K1^^^CAIRO_GH^MR",
    )
    client = await MllpClient.connect(labs.mllp_port)
    assert ack_fields(await client.send(text.encode()))["MSA"][1] == "AA"
    await client.close()

    reader = TopicReader(kafka_bootstrap)
    try:
        _, value, key = await reader.wait_for(
            lambda kind, value, key: (
                kind == "hin.labs.v1.TestResultPublished"
                and events.TestResultPublished.FromString(value).result.test.code
                == "2823-3"
                and key == "patient-k"
            )
        )
    finally:
        reader.close()
    event = events.TestResultPublished.FromString(value)
    assert event.result.critical is True
    assert (
        event.result.interpretation
        == events.Interpretation.INTERPRETATION_CRITICAL_HIGH
    )
    assert event.result.value.quantity == "6.9"
    assert event.historical is False


async def test_unmatched_linked_on_registration(
    labs: Running, kafka_bootstrap: str
) -> None:
    text = oru("LATE-PATIENT-1", [nm_obx(1, "142")], pid3="MRN-LATE^^^CAIRO_GH^MR")
    client = await MllpClient.connect(labs.mllp_port)
    assert ack_fields(await client.send(text.encode()))["MSA"][1] == "AA"
    await client.close()
    [item] = await unmatched_of(labs, "LATE-PATIENT-1")
    assert item.state == pb.UnmatchedState.UNMATCHED_STATE_OPEN
    assert item.reason == pb.UnmatchedReason.UNMATCHED_REASON_NO_MATCH

    registered = records_events.PatientRegistered(
        patient=records_events.PatientSnapshot(
            patient_id="patient-late",
            version=1,
            identifiers=[
                types.Identifier(system="urn:hin:id:mrn:org-1", value="MRN-LATE")
            ],
        )
    )
    publish_records_event(kafka_bootstrap, registered, "patient-late")

    reader = TopicReader(kafka_bootstrap)
    try:
        _, value, key = await reader.wait_for(
            lambda kind, value, key: (
                kind == "hin.labs.v1.TestResultPublished" and key == "patient-late"
            )
        )
    finally:
        reader.close()
    assert events.TestResultPublished.FromString(value).result.value.quantity == "142"
    [linked] = await unmatched_of(labs, "LATE-PATIENT-1")
    assert linked.state == pb.UnmatchedState.UNMATCHED_STATE_LINKED
    assert linked.patient_id == "patient-late"


async def test_ambiguous_identifiers_stay_unmatched(labs: Running) -> None:
    labs.register_patient(
        "patient-a", [types.Identifier(system="urn:hin:id:mrn:org-1", value="DUP-1")]
    )
    labs.register_patient(
        "patient-b", [types.Identifier(system="urn:hin:id:mrn:org-2", value="DUP-1")]
    )
    text = oru("AMBIGUOUS-1", [nm_obx(1, "140")], pid3="DUP-1^^^SOMEWHERE^MR")
    client = await MllpClient.connect(labs.mllp_port)
    assert ack_fields(await client.send(text.encode()))["MSA"][1] == "AA"
    await client.close()
    [item] = await unmatched_of(labs, "AMBIGUOUS-1")
    assert item.reason == pb.UnmatchedReason.UNMATCHED_REASON_AMBIGUOUS
    assert item.state == pb.UnmatchedState.UNMATCHED_STATE_OPEN
    assert item.results[0].patient_id == ""
