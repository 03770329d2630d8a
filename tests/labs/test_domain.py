"""Critical limits, reference ranges and settings of svc_labs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from mesh.runtime.settings import ServiceSettings, SettingsError
from svc_labs.domain import (
    CriticalLimits,
    CriticalLimitsError,
    apply_critical_rules,
    parse_reference_range,
)
from svc_labs.settings import LabsSettings

Interpretation = events.Interpretation
LIMITS = CriticalLimits.load()


def potassium(
    quantity: str, unit: str = "mmol/L", comparator: str = ""
) -> events.TestResult:
    return events.TestResult(
        test=types.Coding(system="http://loinc.org", code="2823-3"),
        value=events.ResultValue(quantity=quantity, unit=unit, comparator=comparator),
    )


@pytest.mark.parametrize(
    "quantity,expected",
    [
        ("6.9", Interpretation.INTERPRETATION_CRITICAL_HIGH),
        ("6.0", Interpretation.INTERPRETATION_CRITICAL_HIGH),
        ("5.9", Interpretation.INTERPRETATION_UNSPECIFIED),
        ("2.5", Interpretation.INTERPRETATION_CRITICAL_LOW),
        ("2.6", Interpretation.INTERPRETATION_UNSPECIFIED),
    ],
)
def test_default_potassium_limits(quantity: str, expected: int) -> None:
    assert LIMITS.evaluate("2823-3", quantity, "mmol/L") == expected


def test_other_unit_not_compared() -> None:
    assert (
        LIMITS.evaluate("2823-3", "6.9", "mg/dL")
        == Interpretation.INTERPRETATION_UNSPECIFIED
    )


def test_comparator_below_high_limit() -> None:
    assert LIMITS.evaluate("2823-3", "7.0", "mmol/L", "<") == (
        Interpretation.INTERPRETATION_UNSPECIFIED
    )


def test_limit_sets_flag_when_lab_sent_none() -> None:
    result = potassium("6.9")
    apply_critical_rules(result, LIMITS)
    assert result.critical is True
    assert result.interpretation == Interpretation.INTERPRETATION_CRITICAL_HIGH


def test_limit_keeps_lab_flag() -> None:
    result = potassium("6.9")
    result.interpretation = Interpretation.INTERPRETATION_HIGH
    apply_critical_rules(result, LIMITS)
    assert result.critical is True
    assert result.interpretation == Interpretation.INTERPRETATION_HIGH


def test_lab_critical_flag_without_limit() -> None:
    result = events.TestResult(
        test=types.Coding(system="http://loinc.org", code="1234-5"),
        value=events.ResultValue(quantity="1"),
        interpretation=Interpretation.INTERPRETATION_CRITICAL_LOW,
    )
    apply_critical_rules(result, LIMITS)
    assert result.critical is True


def test_limits_file_override(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(
        json.dumps(
            {"limits": [{"loinc": "2823-3", "units": ["mmol/L"], "high": "5.5"}]}
        )
    )
    limits = CriticalLimits.load(path)
    assert limits.evaluate("2823-3", "5.6", "mmol/L") == (
        Interpretation.INTERPRETATION_CRITICAL_HIGH
    )
    assert limits.evaluate("2823-3", "1.0", "mmol/L") == (
        Interpretation.INTERPRETATION_UNSPECIFIED
    )


@pytest.mark.parametrize(
    "document",
    [
        {"limits": [{"units": ["mmol/L"], "high": "5"}]},
        {"limits": [{"loinc": "1-1", "units": [], "high": "5"}]},
        {"limits": [{"loinc": "1-1", "units": ["g"], "high": "five"}]},
        {"limits": [{"loinc": "1-1", "units": ["g"]}]},
        {"other": []},
    ],
)
def test_invalid_limits_file(tmp_path: Path, document: dict[str, object]) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CriticalLimitsError):
        CriticalLimits.load(path)


@pytest.mark.parametrize(
    "text,low,high",
    [
        ("3.5-5.0", "3.5", "5.0"),
        ("4.3 to 6.2", "4.3", "6.2"),
        ("<5", "", "5"),
        (">60", "60", ""),
        ("Negative", "", ""),
    ],
)
def test_reference_range(text: str, low: str, high: str) -> None:
    parsed = parse_reference_range(text)
    assert (parsed.low, parsed.high, parsed.text) == (low, high, text)


def settings(**extra: str) -> ServiceSettings:
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    environ.update({f"HIN_LABS_{k.upper()}": v for k, v in extra.items()})
    return ServiceSettings.from_env("labs", environ=environ)


def test_settings_defaults() -> None:
    labs = LabsSettings.from_service_settings(settings())
    assert labs.mllp is not None
    assert (labs.mllp.host, labs.mllp.port) == ("127.0.0.1", 2575)
    assert str(labs.default_zone) == "Africa/Cairo"


def test_settings_mllp_off() -> None:
    assert LabsSettings.from_service_settings(settings(mllp_address="off")).mllp is None


@pytest.mark.parametrize(
    "extra",
    [
        {"mllp_address": "0.0.0.0:2575"},
        {"mllp_address": "127.0.0.1:http"},
        {"facility_zones": "LAB1=Mars/Olympus"},
        {"facility_zones": "LAB1"},
        {"mllp_max_frame_bytes": "0"},
    ],
)
def test_settings_invalid(extra: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        LabsSettings.from_service_settings(settings(**extra))
