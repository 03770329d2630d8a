"""Authorization seam every servicer calls before touching patient data.

Servicers call ``await authorize(authorizer, action=..., patient_id=...)``.
Actions are named ``<context>.<category>.<verb>`` with these categories:
``demographics``, ``clinical``, ``schedule``, ``billing``, ``consent``,
``audit``, ``notification``, ``admin``; and verbs ``read`` and ``write``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hin.authz.v1 import events_pb2 as authz_events
from mesh.runtime.errors import PermissionDenied, Unauthenticated
from mesh.runtime.principal import Principal, PrincipalKind, current_principal

Purpose = authz_events.Purpose


@dataclass(frozen=True)
class Decision:
    """Outcome of one access check."""

    allowed: bool
    reason: str
    #: Access granted through a break-the-glass grant.
    emergency: bool = False
    #: Clinical fields must be removed from the response (minimum necessary).
    redact_clinical: bool = False


class Authorizer(Protocol):
    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = Purpose.PURPOSE_TREATMENT,
        organization_id: str = "",
    ) -> Decision: ...


class RolePolicyAuthorizer:
    """Role permissions only, for running one service without svc_authz.

    It knows nothing of care relationships or consent, so a network always
    runs with ``HIN_AUTHZ_ADDRESS`` set and this class serves tests of a
    single service.
    """

    def __init__(self, permissions: dict[str, set[str]] | None = None) -> None:
        self._permissions = permissions if permissions is not None else {}

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = Purpose.PURPOSE_TREATMENT,
        organization_id: str = "",
    ) -> Decision:
        if principal.kind is PrincipalKind.SERVICE:
            return Decision(True, "service identity")
        if principal.kind is PrincipalKind.ANONYMOUS:
            return Decision(False, "caller is not authenticated")
        if principal.patient_id and patient_id == principal.patient_id:
            return Decision(True, "patient reads own record")
        for role in principal.roles:
            granted = self._permissions.get(role, set())
            if action in granted or "*" in granted:
                return Decision(True, f"role {role} may {action}")
        return Decision(False, f"no role of the caller may {action}")


async def authorize(
    authorizer: Authorizer,
    *,
    action: str,
    patient_id: str = "",
    purpose: int = Purpose.PURPOSE_TREATMENT,
    organization_id: str = "",
) -> Decision:
    """Check the current caller; raise PermissionDenied or Unauthenticated."""
    principal = current_principal()
    if principal.kind is PrincipalKind.ANONYMOUS:
        raise Unauthenticated(
            "this call needs a bearer token", reason="MISSING_CREDENTIALS"
        )
    decision = await authorizer.check(
        principal,
        action=action,
        patient_id=patient_id,
        purpose=purpose,
        organization_id=organization_id,
    )
    if not decision.allowed:
        raise PermissionDenied(
            f"{action} denied: {decision.reason}",
            reason="ACCESS_DENIED",
            metadata={"action": action},
        )
    return decision
