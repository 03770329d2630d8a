"""Laboratory rules: critical limits, interpretation flags, result checks."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

from hin.labs.v1 import events_pb2 as events

LOINC_SYSTEM = "http://loinc.org"
SNOMED_SYSTEM = "http://snomed.info/sct"
UCUM_SYSTEM = "http://unitsofmeasure.org"

Interpretation = events.Interpretation
ResultStatus = events.ResultStatus

#: HL7 table 0078 abnormal flags (and FHIR v3 ObservationInterpretation codes,
#: which use the same letters) mapped to the network's interpretation. "AA"
#: (critically abnormal) maps to ABNORMAL and also marks the result critical.
INTERPRETATION_CODES: Mapping[str, events.Interpretation.ValueType] = {
    "N": Interpretation.INTERPRETATION_NORMAL,
    "H": Interpretation.INTERPRETATION_HIGH,
    "L": Interpretation.INTERPRETATION_LOW,
    "HH": Interpretation.INTERPRETATION_CRITICAL_HIGH,
    "LL": Interpretation.INTERPRETATION_CRITICAL_LOW,
    "A": Interpretation.INTERPRETATION_ABNORMAL,
    "AA": Interpretation.INTERPRETATION_ABNORMAL,
}
CRITICAL_INTERPRETATION_CODES = frozenset({"HH", "LL", "AA"})

#: HL7 table 0085 observation result status mapped to the network's status.
#: I (specimen in lab, result pending) has no value and is not stored.
RESULT_STATUS_CODES: Mapping[str, events.ResultStatus.ValueType] = {
    "F": ResultStatus.RESULT_STATUS_FINAL,
    "U": ResultStatus.RESULT_STATUS_FINAL,
    "C": ResultStatus.RESULT_STATUS_CORRECTED,
    "P": ResultStatus.RESULT_STATUS_PRELIMINARY,
    "R": ResultStatus.RESULT_STATUS_PRELIMINARY,
    "S": ResultStatus.RESULT_STATUS_PRELIMINARY,
    "X": ResultStatus.RESULT_STATUS_CANCELLED,
    "D": ResultStatus.RESULT_STATUS_CANCELLED,
    "W": ResultStatus.RESULT_STATUS_CANCELLED,
}

_DECIMAL = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


class CriticalLimitsError(ValueError):
    """The critical limits file is missing, not JSON, or has an invalid entry."""


@dataclass(frozen=True)
class CriticalLimit:
    """Critical low and high bounds of one LOINC code in the listed units.

    A value at or beyond a bound is critical. Bounds apply only to results in
    one of ``units`` (UCUM codes, compared exactly), because the same number
    in another unit means something else.
    """

    loinc_code: str
    units: frozenset[str]
    low: Decimal | None
    high: Decimal | None


class CriticalLimits:
    """Critical limits per LOINC code."""

    def __init__(self, limits: Mapping[str, CriticalLimit]) -> None:
        self._limits = dict(limits)

    @classmethod
    def load(cls, path: Path | None = None) -> CriticalLimits:
        """Read limits from ``path``, or the defaults shipped with the package.

        Raises:
            CriticalLimitsError: the file cannot be read or an entry is invalid.
        """
        try:
            if path is None:
                text = (
                    resources.files("svc_labs")
                    .joinpath("critical_limits.json")
                    .read_text(encoding="utf-8")
                )
            else:
                text = path.read_text(encoding="utf-8")
            document = json.loads(text)
        except (OSError, ValueError) as exc:
            raise CriticalLimitsError(
                f"cannot read critical limits from {path or 'the package'}: {exc}"
            ) from exc
        return cls(_parse_limits(document, str(path or "critical_limits.json")))

    def get(self, loinc_code: str) -> CriticalLimit | None:
        return self._limits.get(loinc_code)

    def evaluate(
        self, loinc_code: str, quantity: str, unit: str, comparator: str = ""
    ) -> events.Interpretation.ValueType:
        """Return CRITICAL_HIGH, CRITICAL_LOW or UNSPECIFIED for one value.

        A value with a comparator counts only when the comparator points past
        the bound: ">7.0" is critical for a high limit of 6.0, "<7.0" is not.
        """
        limit = self._limits.get(loinc_code)
        if limit is None or unit.strip() not in limit.units:
            return Interpretation.INTERPRETATION_UNSPECIFIED
        value = parse_decimal(quantity)
        if value is None:
            return Interpretation.INTERPRETATION_UNSPECIFIED
        if limit.high is not None and value >= limit.high and "<" not in comparator:
            return Interpretation.INTERPRETATION_CRITICAL_HIGH
        if limit.low is not None and value <= limit.low and ">" not in comparator:
            return Interpretation.INTERPRETATION_CRITICAL_LOW
        return Interpretation.INTERPRETATION_UNSPECIFIED


def apply_critical_rules(result: events.TestResult, limits: CriticalLimits) -> None:
    """Set ``result.critical`` from the lab's flag and the critical limits.

    The lab's own HH, LL or AA flag always makes a result critical. A value
    past a configured limit is critical too, and when the lab sent no flag its
    interpretation becomes CRITICAL_HIGH or CRITICAL_LOW.
    """
    if result.interpretation in (
        Interpretation.INTERPRETATION_CRITICAL_HIGH,
        Interpretation.INTERPRETATION_CRITICAL_LOW,
    ):
        result.critical = True
    if (
        result.value.WhichOneof("value") != "quantity"
        or result.test.system != LOINC_SYSTEM
    ):
        return
    verdict = limits.evaluate(
        result.test.code,
        result.value.quantity,
        result.value.unit,
        result.value.comparator,
    )
    if verdict == Interpretation.INTERPRETATION_UNSPECIFIED:
        return
    result.critical = True
    if result.interpretation == Interpretation.INTERPRETATION_UNSPECIFIED:
        result.interpretation = verdict


def parse_decimal(text: str) -> Decimal | None:
    """Return ``text`` as a Decimal, or None when it is not a plain decimal."""
    text = text.strip()
    if not _DECIMAL.match(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def is_decimal(text: str) -> bool:
    """Return whether ``text`` is a plain decimal number such as "-6.90"."""
    return parse_decimal(text) is not None


def parse_reference_range(text: str) -> events.ReferenceRange:
    """Read a reference range such as "3.5-5.0", "4.3 to 6.2", "<5" or ">60".

    The text is always kept; low and high are filled when they can be read.
    """
    reference = events.ReferenceRange(text=text.strip())
    compact = text.strip()
    match = re.match(
        r"^([+-]?\d*\.?\d+)\s*(?:-|to|–)\s*([+-]?\d*\.?\d+)$", compact, re.IGNORECASE
    )
    if match:
        reference.low, reference.high = match.group(1), match.group(2)
        return reference
    match = re.match(r"^(<=?|>=?)\s*([+-]?\d*\.?\d+)$", compact)
    if match:
        if match.group(1).startswith("<"):
            reference.high = match.group(2)
        else:
            reference.low = match.group(2)
    return reference


def _parse_limits(document: object, source: str) -> dict[str, CriticalLimit]:
    if not isinstance(document, dict) or not isinstance(document.get("limits"), list):
        raise CriticalLimitsError(f"{source}: expected an object with a 'limits' list")
    limits: dict[str, CriticalLimit] = {}
    for index, entry in enumerate(document["limits"]):
        where = f"{source}: limits[{index}]"
        if not isinstance(entry, dict) or not entry.get("loinc"):
            raise CriticalLimitsError(f"{where}: 'loinc' is required")
        units = entry.get("units")
        if not isinstance(units, list) or not units:
            raise CriticalLimitsError(f"{where}: 'units' must be a non-empty list")
        low = _limit_bound(entry.get("low"), f"{where}.low")
        high = _limit_bound(entry.get("high"), f"{where}.high")
        if low is None and high is None:
            raise CriticalLimitsError(f"{where}: give 'low', 'high' or both")
        code = str(entry["loinc"])
        limits[code] = CriticalLimit(code, frozenset(str(u) for u in units), low, high)
    return limits


def _limit_bound(value: object, where: str) -> Decimal | None:
    if value is None:
        return None
    parsed = parse_decimal(str(value))
    if parsed is None:
        raise CriticalLimitsError(
            f"{where}: expected a decimal number, found {value!r}"
        )
    return parsed
