"""Structure check of Egypt's 14-digit national ID.

Layout, left to right: digit 1 is the century of birth (2 = 1900s,
3 = 2000s); digits 2-7 are the birth date as YYMMDD; digits 8-9 are the
governorate of birth (88 = born abroad); digits 10-13 are a sequence whose
last digit is odd for men and even for women; digit 14 is a check digit.
The check digit's algorithm is not published, so it is not verified.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

NATIONAL_ID_SYSTEM = "urn:hin:id:eg-national-id"

GOVERNORATES: dict[str, str] = {
    "01": "Cairo",
    "02": "Alexandria",
    "03": "Port Said",
    "04": "Suez",
    "11": "Damietta",
    "12": "Dakahlia",
    "13": "Sharqia",
    "14": "Qalyubia",
    "15": "Kafr El Sheikh",
    "16": "Gharbia",
    "17": "Monufia",
    "18": "Beheira",
    "19": "Ismailia",
    "21": "Giza",
    "22": "Beni Suef",
    "23": "Faiyum",
    "24": "Minya",
    "25": "Asyut",
    "26": "Sohag",
    "27": "Qena",
    "28": "Aswan",
    "29": "Luxor",
    "31": "Red Sea",
    "32": "New Valley",
    "33": "Matrouh",
    "34": "North Sinai",
    "35": "South Sinai",
    "88": "born abroad",
}

_CENTURIES = {"2": 1900, "3": 2000}


@dataclass(frozen=True)
class NationalId:
    """Facts encoded in a structurally valid national ID."""

    birth_date: datetime.date
    governorate_code: str
    male: bool


class InvalidNationalId(ValueError):
    """The value is not a structurally valid national ID. str() explains why."""


def parse_national_id(value: str) -> NationalId:
    """Decode ``value``; raise InvalidNationalId naming the wrong part.

    Messages never repeat the value, because it identifies a person.
    """
    if len(value) != 14 or not value.isdigit():
        raise InvalidNationalId(
            f"must be exactly 14 digits, got {len(value)} characters"
            + ("" if value.isdigit() else " including non-digits")
        )
    century = _CENTURIES.get(value[0])
    if century is None:
        raise InvalidNationalId(
            "digit 1 (century) must be 2 for the 1900s or 3 for the 2000s"
        )
    year, month, day = century + int(value[1:3]), int(value[3:5]), int(value[5:7])
    try:
        birth_date = datetime.date(year, month, day)
    except ValueError:
        raise InvalidNationalId(
            "digits 2-7 must be a real birth date as YYMMDD"
        ) from None
    governorate = value[7:9]
    if governorate not in GOVERNORATES:
        raise InvalidNationalId(
            "digits 8-9 must be a governorate code (01-04, 11-19, 21-29, "
            "31-35, or 88 for born abroad)"
        )
    return NationalId(
        birth_date=birth_date,
        governorate_code=governorate,
        male=int(value[12]) % 2 == 1,
    )
