"""The caller of the current request, as established by authentication."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from enum import Enum


class PrincipalKind(Enum):
    PERSON = "person"
    SERVICE = "service"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Authenticated caller: a person with a JWT or a service with a SPIFFE id."""

    subject: str
    kind: PrincipalKind
    roles: frozenset[str] = field(default_factory=frozenset)
    organization_id: str = ""
    #: Practitioner id of a clinician, when the person is one.
    practitioner_id: str = ""
    #: Patient id, when the person is a patient.
    patient_id: str = ""
    #: Service name for a SPIFFE id spiffe://hin.local/svc/<name>.
    service_name: str = ""

    def has_role(self, role: str) -> bool:
        return role in self.roles


ANONYMOUS = Principal(subject="anonymous", kind=PrincipalKind.ANONYMOUS)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "hin_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """Return the caller of the request being served, or ANONYMOUS."""
    return _current.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    """Make ``principal`` the caller for the rest of this context."""
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)
