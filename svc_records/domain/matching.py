"""Score how likely two demographic records describe the same person.

Score, from 0 to 100:

- name, up to 60 points: 60 times the best similarity between any name of
  one record and any name of the other. Names are normalized first (see
  ``names.normalize_name``), so case, accents and Arabic spelling variants
  do not count. Each name is compared in two forms: its words sorted
  alphabetically, so word order does not count, and its words in order
  with the spaces removed, so "عبد الله" equals "عبدالله". The similarity
  is difflib's SequenceMatcher ratio (0 to 1) of the better form.
- birth date, 30 points when both are known and equal.
- gender, 10 points when both are known and equal; 5 when either is unknown.

Candidates are looked up among patients with the same birth date, so every
scored candidate has the 30 birth-date points. A candidate scoring
``POSSIBLE_DUPLICATE_SCORE`` or more is a possible duplicate: with equal
birth dates and genders that needs a name similarity of 0.84, for example
"Ahmed Hassan" against "Ahmad Hassan" (0.92).
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from svc_records.domain.names import name_tokens
from svc_records.domain.patients import date_to_iso

POSSIBLE_DUPLICATE_SCORE = 90
NAME_POINTS = 60
BIRTH_DATE_POINTS = 30
GENDER_POINTS = 10

_KNOWN_GENDERS = (
    types_pb2.GENDER_MALE,
    types_pb2.GENDER_FEMALE,
    types_pb2.GENDER_OTHER,
)


@dataclass(frozen=True)
class MatchScore:
    """Score of one candidate and the fields that contributed to it."""

    score: int
    matched_fields: tuple[str, ...]


def comparable_names(patient: pb.PatientDemographics) -> list[tuple[str, str]]:
    """Return each name as (sorted words, words joined without spaces)."""
    names = []
    for name in patient.names:
        words = [
            word
            for part in (*name.given, name.family, name.text)
            for word in name_tokens(part)
        ]
        if words:
            names.append((" ".join(sorted(set(words))), "".join(words)))
    return names


def name_similarity(
    left: pb.PatientDemographics, right: pb.PatientDemographics
) -> float:
    """Return the best similarity between any two names of the records."""
    best = 0.0
    for left_sorted, left_joined in comparable_names(left):
        for right_sorted, right_joined in comparable_names(right):
            best = max(
                best,
                SequenceMatcher(None, left_sorted, right_sorted).ratio(),
                SequenceMatcher(None, left_joined, right_joined).ratio(),
            )
    return best


def score_match(
    new: pb.PatientDemographics, existing: pb.PatientDemographics
) -> MatchScore:
    """Score ``existing`` as a possible duplicate of ``new``."""
    fields: list[str] = []
    similarity = name_similarity(new, existing)
    score = NAME_POINTS * similarity
    if similarity >= 0.84:
        fields.append("names")
    new_birth, old_birth = date_to_iso(new.birth_date), date_to_iso(existing.birth_date)
    if new_birth and new_birth == old_birth:
        score += BIRTH_DATE_POINTS
        fields.append("birth_date")
    if new.gender in _KNOWN_GENDERS and existing.gender in _KNOWN_GENDERS:
        if new.gender == existing.gender:
            score += GENDER_POINTS
            fields.append("gender")
    else:
        score += GENDER_POINTS / 2
    return MatchScore(score=round(score), matched_fields=tuple(fields))


def is_possible_duplicate(match: MatchScore) -> bool:
    """Tell whether a score is high enough to stop a registration."""
    return match.score >= POSSIBLE_DUPLICATE_SCORE
