"""Policy rules as a pure function: the cases the gRPC table cannot isolate."""

from __future__ import annotations

import pytest

from hin.authz.v1 import events_pb2 as events
from svc_authz.domain.policy import Facts, Subject, SubjectKind, decide

T = events.PURPOSE_TREATMENT


def _person(*roles: str, **fields: str) -> Subject:
    return Subject(
        subject="s",
        kind=SubjectKind.PERSON,
        roles=frozenset(roles),
        organization_id=fields.get("organization_id", "h1"),
        practitioner_id=fields.get("practitioner_id", ""),
        patient_id=fields.get("patient_id", ""),
    )


def _known(**fields: object) -> Facts:
    values: dict[str, object] = {
        "patient_id": "p1",
        "patient_known": True,
        "data_organization_id": "h1",
    }
    values.update(fields)
    return Facts(**values)  # type: ignore[arg-type]


def test_unredacted_role_wins_over_redacted() -> None:
    subject = _person("billing_clerk", "doctor", practitioner_id="pr")
    outcome = decide(
        subject,
        action="records.demographics.read",
        purpose=T,
        facts=_known(practitioner_relationship=True),
    )
    assert outcome.allowed
    assert outcome.redact_clinical is False


def test_redacted_role_when_no_relationship() -> None:
    subject = _person("billing_clerk", "doctor", practitioner_id="pr")
    outcome = decide(
        subject, action="records.demographics.read", purpose=T, facts=_known()
    )
    assert outcome.allowed
    assert outcome.redact_clinical is True


def test_relationship_preferred_over_emergency() -> None:
    outcome = decide(
        _person("doctor", practitioner_id="pr"),
        action="records.clinical.read",
        purpose=T,
        facts=_known(practitioner_relationship=True, break_glass=True),
    )
    assert outcome.allowed
    assert outcome.emergency is False


def test_assigned_role_counts() -> None:
    outcome = decide(
        _person(),
        action="billing.billing.read",
        purpose=T,
        facts=_known(assigned_roles=frozenset({"billing_clerk"})),
    )
    assert outcome.allowed


def test_unknown_role_grants_nothing() -> None:
    outcome = decide(
        _person("superuser"), action="records.clinical.read", purpose=T, facts=_known()
    )
    assert outcome.reason_code == "ROLE_NOT_PERMITTED"


def test_write_is_never_redacted() -> None:
    outcome = decide(
        _person("receptionist"),
        action="records.demographics.write",
        purpose=T,
        facts=_known(),
    )
    assert outcome.allowed
    assert outcome.redact_clinical is False


def test_merged_own_record_matches() -> None:
    # Both ids were resolved to the survivor before the rules ran.
    outcome = decide(
        _person("patient", patient_id="old"),
        action="records.clinical.read",
        purpose=T,
        facts=_known(own_patient_id="p1"),
    )
    assert outcome.reason_code == "OWN_RECORD"


def test_consent_for_other_organization_ignored() -> None:
    outcome = decide(
        _person("receptionist"),
        action="records.demographics.read",
        purpose=T,
        facts=_known(data_organization_id="h2", consents=(("h3", frozenset({T})),)),
    )
    assert outcome.reason_code == "CONSENT_REQUIRED"


@pytest.mark.parametrize(
    "action",
    ["records.clinical", "records.secrets.read", "records.clinical.delete", ""],
)
def test_malformed_action_raises(action: str) -> None:
    with pytest.raises(ValueError):
        decide(_person("doctor"), action=action, purpose=T, facts=_known())
