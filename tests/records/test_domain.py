"""Rules of the records domain: names, national IDs and match scores."""

from __future__ import annotations

import datetime

import pytest

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from svc_records.domain import matching
from svc_records.domain.names import normalize_name
from svc_records.domain.national_id import InvalidNationalId, parse_national_id
from svc_records.domain.patients import snapshot_fields


@pytest.mark.parametrize(
    ("variant", "plain"),
    [
        ("أحمد", "احمد"),  # alef with hamza above
        ("إسلام", "اسلام"),  # alef with hamza below
        ("آمنة", "امنه"),  # alef with madda, taa marbuta
        ("ٱلله", "الله"),  # alef wasla
        ("مصطفى", "مصطفي"),  # alef maqsura
        ("مُحَمَّد", "محمد"),  # damma, fatha, shadda
        ("مـــحمد", "محمد"),  # tatweel
        ("Ordóñez", "ordonez"),
        ("ÉLODIE  Müller", "elodie muller"),
    ],
)
def test_name_variants_normalize_equal(variant: str, plain: str) -> None:
    assert normalize_name(variant) == normalize_name(plain)


def test_national_id_decodes_parts() -> None:
    # 3 = 2000s, 030228 = 2003-02-28, 21 = Giza, 0012 (even: female), 7.
    parsed = parse_national_id("30302282100127")
    assert parsed.birth_date == datetime.date(2003, 2, 28)
    assert parsed.governorate_code == "21"
    assert parsed.male is False


def test_national_id_born_abroad_accepted() -> None:
    parsed = parse_national_id("29912318800011")
    assert parsed.birth_date == datetime.date(1999, 12, 31)
    assert parsed.governorate_code == "88"
    assert parsed.male is True


@pytest.mark.parametrize(
    ("value", "part"),
    [
        ("2990229010001", "14 digits"),  # 13 digits
        ("2990229010001X", "14 digits"),
        ("19902290100011", "digit 1"),  # century 1 is not assigned
        ("29902290100011", "digits 2-7"),  # 1999-02-29 does not exist
        ("29900000100011", "digits 2-7"),
        ("29901010500011", "digits 8-9"),  # governorate 05 is not assigned
        ("29901013600011", "digits 8-9"),  # governorate 36 is not assigned
    ],
)
def test_bad_national_id_names_part(value: str, part: str) -> None:
    with pytest.raises(InvalidNationalId) as caught:
        parse_national_id(value)
    assert part in str(caught.value)
    assert value not in str(caught.value)


def person(given: str, family: str, gender: int, birth: str) -> pb.PatientDemographics:
    year, month, day = (int(x) for x in birth.split("-"))
    return pb.PatientDemographics(
        names=[types_pb2.HumanName(family=family, given=[given])],
        gender=gender,
        birth_date=types_pb2.Date(year=year, month=month, day=day),
    )


def test_identical_people_score_hundred() -> None:
    left = person("Mariam", "Adel", types_pb2.GENDER_FEMALE, "1990-01-01")
    right = person("MARIAM", "ADEL", types_pb2.GENDER_FEMALE, "1990-01-01")
    assert matching.score_match(left, right).score == 100


def test_arabic_spelling_variants_score_hundred() -> None:
    left = person("أحمد", "عبد الله", types_pb2.GENDER_MALE, "1990-01-01")
    right = person("احمد", "عبدالله", types_pb2.GENDER_MALE, "1990-01-01")
    # Without spaces both names read "احمدعبدالله": 60 + 30 + 10.
    assert matching.score_match(left, right).score == 100


def test_other_gender_lowers_score() -> None:
    left = person("Sam", "Nour", types_pb2.GENDER_MALE, "1990-01-01")
    right = person("Sam", "Nour", types_pb2.GENDER_FEMALE, "1990-01-01")
    match = matching.score_match(left, right)
    assert match.score == 90
    assert "gender" not in match.matched_fields


def test_unrelated_names_are_not_duplicates() -> None:
    left = person("Hesham", "Tawfik", types_pb2.GENDER_MALE, "1990-01-01")
    right = person("Bassem", "Kamal", types_pb2.GENDER_MALE, "1990-01-01")
    assert not matching.is_possible_duplicate(matching.score_match(left, right))


def test_snapshot_fields_fold_deceased_time() -> None:
    changed = ["deceased", "deceased_at", "addresses", "telecom"]
    assert snapshot_fields(changed) == ["deceased", "telecom"]
