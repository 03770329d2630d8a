"""Recipient ids and the principal each one acts as in consent checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mesh.runtime.principal import Principal, PrincipalKind

#: Role that a practitioner recipient is checked with; svc_authz permits
#: doctors to read notifications.
PRACTITIONER_ROLE = "doctor"
PATIENT_ROLE = "patient"
#: Role name of the on-call staff; role:on_call@<org> resolves through the
#: organization's on-call rosters, other roles through SetRoleMembers.
ON_CALL_ROLE = "on_call"
PRIVACY_OFFICER_ROLE = "privacy_officer"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class RecipientKind(Enum):
    PRACTITIONER = "practitioner"
    PATIENT = "patient"
    ROLE = "role"


class InvalidRecipient(ValueError):
    """A recipient id does not have one of the three accepted forms."""


@dataclass(frozen=True)
class Recipient:
    """One addressee: a practitioner, a patient, or a role in an organization."""

    kind: RecipientKind
    #: Practitioner id, patient id, or role name.
    id: str
    #: Organization of a role; empty for people.
    organization_id: str = ""

    def __str__(self) -> str:
        if self.kind is RecipientKind.ROLE:
            return f"role:{self.id}@{self.organization_id}"
        return f"{self.kind.value}:{self.id}"


def practitioner(practitioner_id: str) -> Recipient:
    """Return the recipient of a practitioner."""
    return Recipient(RecipientKind.PRACTITIONER, practitioner_id)


def patient(patient_id: str) -> Recipient:
    """Return the recipient of a patient."""
    return Recipient(RecipientKind.PATIENT, patient_id)


def role(name: str, organization_id: str) -> Recipient:
    """Return the recipient of everyone holding ``name`` in an organization."""
    return Recipient(RecipientKind.ROLE, name, organization_id)


def parse_recipient(text: str) -> Recipient:
    """Parse ``practitioner:<id>``, ``patient:<id>`` or ``role:<role>@<org>``.

    Raises:
        InvalidRecipient: with a message that names the expected forms.
    """
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "role":
        name, at, organization_id = rest.partition("@")
        if at and _ROLE.match(name) and _ID.match(organization_id):
            return role(name, organization_id)
    elif sep and prefix in ("practitioner", "patient") and _ID.match(rest):
        return Recipient(RecipientKind(prefix), rest)
    raise InvalidRecipient(
        f"recipient {text!r} is invalid; expected practitioner:<id>, "
        "patient:<id> or role:<role>@<organization id>"
    )


def recipient_principal(recipient: Recipient, organization_id: str) -> Principal:
    """Build the principal that a recipient is checked as before notifying it.

    Args:
        recipient: the person or role to be notified.
        organization_id: organization the notification comes from; a role's
            own organization wins.
    """
    if recipient.kind is RecipientKind.PATIENT:
        return Principal(
            subject=str(recipient),
            kind=PrincipalKind.PERSON,
            roles=frozenset({PATIENT_ROLE}),
            organization_id=organization_id,
            patient_id=recipient.id,
        )
    if recipient.kind is RecipientKind.PRACTITIONER:
        return Principal(
            subject=str(recipient),
            kind=PrincipalKind.PERSON,
            roles=frozenset({PRACTITIONER_ROLE}),
            organization_id=organization_id,
            practitioner_id=recipient.id,
        )
    return Principal(
        subject=str(recipient),
        kind=PrincipalKind.PERSON,
        roles=frozenset({recipient.id}),
        organization_id=recipient.organization_id,
    )


def may_read_stream(principal: Principal, recipient: Recipient) -> bool:
    """Tell whether a caller is the recipient, or has the recipient role."""
    if principal.kind is PrincipalKind.SERVICE:
        return True
    if principal.kind is not PrincipalKind.PERSON:
        return False
    if recipient.kind is RecipientKind.PRACTITIONER:
        return principal.practitioner_id == recipient.id
    if recipient.kind is RecipientKind.PATIENT:
        return principal.patient_id == recipient.id
    return (
        principal.has_role(recipient.id)
        and principal.organization_id == recipient.organization_id
    )
