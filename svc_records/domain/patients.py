"""Rules for patient demographics: validation, search keys, change sets."""

from __future__ import annotations

import datetime
import re

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from mesh.runtime.validation import Violations
from svc_records.domain.names import name_tokens
from svc_records.domain.national_id import (
    NATIONAL_ID_SYSTEM,
    InvalidNationalId,
    parse_national_id,
)

#: Phone searches compare at least this many trailing digits, so a number
#: with or without its country code (+20) finds the same patient.
MIN_PHONE_DIGITS = 9

#: Fields of PatientDemographics compared to report changed_fields.
DEMOGRAPHIC_FIELDS = (
    "identifiers",
    "names",
    "birth_date",
    "gender",
    "deceased",
    "deceased_at",
    "telecom",
    "addresses",
    "managing_organization_id",
)

#: Longest accepted text of any demographic field, in characters. FHIR sets
#: no limit. This bound keeps the PatientRegistered event far below the
#: outbox relay's record limit (librdkafka's message.max.bytes, 1,000,000
#: bytes by default) and keeps duplicate matching fast.
MAX_TEXT_LENGTH = 200
#: Most entries of any repeated demographic field (names, given names,
#: identifiers, telecom, address lines ...), for the same reasons.
MAX_REPEATED = 10
#: Longest accepted text of a chart entry (encounter, condition, allergy,
#: medication), whose dosage text and code displays run longer than names.
MAX_CHART_TEXT_LENGTH = 2000

_NON_DIGITS = re.compile(r"\D")
#: C0 and C1 control characters, NUL included. Tabs and line breaks have no
#: place in a name, an identifier or an address line either.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
#: The same without tab, line feed and carriage return, for chart text such
#: as dosage instructions, which may span lines.
_CONTROL_CHARACTERS_BUT_LINE_BREAKS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
)


def date_to_iso(date: types_pb2.Date) -> str:
    """Return ``date`` as "YYYY-MM-DD", or "" when it is unset."""
    if not (date.year or date.month or date.day):
        return ""
    return f"{date.year:04d}-{date.month:02d}-{date.day:02d}"


def iso_to_date(text: str) -> types_pb2.Date:
    """Parse "YYYY-MM-DD" (or "" for unset) into a Date message."""
    if not text:
        return types_pb2.Date()
    year, month, day = (int(part) for part in text.split("-"))
    return types_pb2.Date(year=year, month=month, day=day)


def check_date(date: types_pb2.Date, field: str, violations: Violations) -> None:
    """Record a violation when ``date`` is set but not a real calendar date."""
    if not (date.year or date.month or date.day):
        return
    try:
        datetime.date(date.year, date.month, date.day)
    except ValueError:
        violations.add(field, "must be a real calendar date (year, month, day)")


def validate_demographics(
    patient: pb.PatientDemographics, prefix: str, violations: Violations
) -> None:
    """Record every violation in ``patient``; field paths start with ``prefix``."""
    if not patient.names:
        violations.add(f"{prefix}.names", "at least one name is required")
    for index, name in enumerate(patient.names):
        if not (name.family or name.given or name.text):
            violations.add(
                f"{prefix}.names[{index}]", "needs a family name, a given name or text"
            )
    check_date(patient.birth_date, f"{prefix}.birth_date", violations)
    seen: set[tuple[str, str]] = set()
    for index, identifier in enumerate(patient.identifiers):
        path = f"{prefix}.identifiers[{index}]"
        if not identifier.system:
            violations.add(f"{path}.system", "is required")
        if not identifier.value:
            violations.add(f"{path}.value", "is required")
        if (identifier.system, identifier.value) in seen:
            violations.add(path, "repeats an earlier identifier of this request")
        seen.add((identifier.system, identifier.value))
        if identifier.system == NATIONAL_ID_SYSTEM:
            _check_national_id(patient, identifier.value, f"{path}.value", violations)
    for index, contact in enumerate(patient.telecom):
        if not contact.value:
            violations.add(f"{prefix}.telecom[{index}].value", "is required")
    if patient.HasField("deceased_at") and not patient.deceased:
        violations.add(f"{prefix}.deceased", "must be true when deceased_at is set")
    if patient.HasField("deceased_at"):
        try:
            patient.deceased_at.ToDatetime()
        except ValueError:
            violations.add(
                f"{prefix}.deceased_at",
                "must be a valid timestamp between the years 1 and 9999",
            )
    check_sizes(patient, prefix, violations)


def check_sizes(
    message: Message,
    path: str,
    violations: Violations,
    *,
    max_text_length: int = MAX_TEXT_LENGTH,
    allow_line_breaks: bool = False,
) -> None:
    """Record each oversized or control-character text and oversized list.

    Walks every field of ``message`` and its nested messages, so a field
    added to the contract later is checked without a change here.
    """
    for field, value in message.ListFields():
        field_path = f"{path}.{field.name}"
        limits = (max_text_length, allow_line_breaks)
        if not field.is_repeated:
            _check_value(field, value, field_path, violations, limits)
            continue
        if len(value) > MAX_REPEATED:
            violations.add(
                field_path,
                f"has {len(value)} entries; at most {MAX_REPEATED} are accepted",
            )
            continue
        for index, item in enumerate(value):
            _check_value(field, item, f"{field_path}[{index}]", violations, limits)


def _check_value(
    field: FieldDescriptor,
    value: object,
    path: str,
    violations: Violations,
    limits: tuple[int, bool],
) -> None:
    max_text_length, allow_line_breaks = limits
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        check_sizes(
            value,
            path,
            violations,
            max_text_length=max_text_length,
            allow_line_breaks=allow_line_breaks,
        )
    elif field.type == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        if len(value) > max_text_length:
            violations.add(
                path,
                f"is {len(value)} characters long; at most {max_text_length} "
                "are accepted",
            )
        else:
            control = (
                _CONTROL_CHARACTERS_BUT_LINE_BREAKS
                if allow_line_breaks
                else _CONTROL_CHARACTERS
            )
            if control.search(value):
                violations.add(path, "contains a control character")


def _check_national_id(
    patient: pb.PatientDemographics, value: str, path: str, violations: Violations
) -> None:
    try:
        national_id = parse_national_id(value)
    except InvalidNationalId as exc:
        violations.add(path, f"is not a valid Egyptian national ID: {exc}")
        return
    birth_date = date_to_iso(patient.birth_date)
    if birth_date and birth_date != national_id.birth_date.isoformat():
        violations.add(
            path, "encodes a birth date (digits 2-7) that differs from birth_date"
        )
    expected_gender = (
        types_pb2.GENDER_MALE if national_id.male else types_pb2.GENDER_FEMALE
    )
    if patient.gender in (types_pb2.GENDER_MALE, types_pb2.GENDER_FEMALE) and (
        patient.gender != expected_gender
    ):
        violations.add(
            path, "digit 13 (odd for male, even for female) contradicts gender"
        )


def identifier_keys(patient: pb.PatientDemographics) -> list[tuple[str, str]]:
    """Return the (system, value) pairs of the patient's identifiers."""
    return [(i.system, i.value) for i in patient.identifiers]


def search_names(patient: pb.PatientDemographics) -> str:
    """Return the padded, normalized name words of every name."""
    words: list[str] = []
    for name in patient.names:
        for part in (name.text, name.family, *name.given):
            words.extend(name_tokens(part))
    return " " + " ".join(dict.fromkeys(words)) + " " if words else ""


def phone_digits(text: str) -> str:
    """Return the digits of a phone number."""
    return _NON_DIGITS.sub("", text)


def search_phones(patient: pb.PatientDemographics) -> str:
    """Return the padded digit strings of the patient's phone numbers."""
    numbers = [
        phone_digits(c.value)
        for c in patient.telecom
        if c.system in ("phone", "sms", "") and phone_digits(c.value)
    ]
    return " " + " ".join(numbers) + " " if numbers else ""


def changed_fields(
    before: pb.PatientDemographics, after: pb.PatientDemographics
) -> list[str]:
    """Name the top-level demographic fields that differ between two versions."""
    changed = []
    for field in DEMOGRAPHIC_FIELDS:
        old, new = getattr(before, field), getattr(after, field)
        if field in ("birth_date", "deceased_at"):
            same = old.SerializeToString(deterministic=True) == new.SerializeToString(
                deterministic=True
            )
        elif field in ("identifiers", "names", "telecom", "addresses"):
            same = list(old) == list(new)
        else:
            same = old == new
        if not same:
            changed.append(field)
    return changed


def snapshot_fields(changed: list[str]) -> list[str]:
    """Map changed demographic fields to the PatientSnapshot fields they touch.

    The snapshot has no addresses, and deceased_at is part of deceased.
    """
    names = {"deceased_at": "deceased", "addresses": ""}
    mapped = [names.get(field, field) for field in changed]
    return [field for field in dict.fromkeys(mapped) if field]


def merge_demographics(
    survivor: pb.PatientDemographics, merged: pb.PatientDemographics
) -> pb.PatientDemographics:
    """Return the survivor's demographics plus what only the merged record had.

    The survivor keeps its own values; identifiers, names, telecom and
    addresses of the merged record that the survivor lacks are appended.
    """
    result = pb.PatientDemographics()
    result.CopyFrom(survivor)
    for field in ("identifiers", "names", "telecom", "addresses"):
        target = getattr(result, field)
        for item in getattr(merged, field):
            if item not in target:
                target.add().CopyFrom(item)
    if not result.birth_date.year and merged.birth_date.year:
        result.birth_date.CopyFrom(merged.birth_date)
    if result.gender == types_pb2.GENDER_UNSPECIFIED:
        result.gender = merged.gender
    return result
