"""Authorization seam every servicer calls before touching patient data.

Servicers call ``await authorize(authorizer, action=..., patient_id=...)``.
Actions are named ``<context>.<category>.<verb>`` with these categories:
``demographics``, ``clinical``, ``schedule``, ``billing``, ``consent``,
``audit``, ``notification``, ``admin``; and verbs ``read`` and ``write``.

A search or an export that returns many patients calls
``await authorize_patients(authorizer, action=..., patient_ids=[...])`` with
the ids it is about to return, and drops the patients that were denied. Each
patient touched then has its own decision and audit record.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from opentelemetry import trace

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
    #: Id of the audit record svc_authz wrote for this decision, if any.
    audit_id: str = ""


CATEGORIES = frozenset(
    {
        "demographics",
        "clinical",
        "schedule",
        "billing",
        "consent",
        "audit",
        "notification",
        "admin",
    }
)
VERBS = frozenset({"read", "write"})

# Span id of the server call in which the last decision was made. The server
# interceptor's audit hook compares it with the current span to tell calls
# that reached a decision (audited by svc_authz) from calls that did not.
_decided_in_span: contextvars.ContextVar[int] = contextvars.ContextVar(
    "hin_decided_in_span", default=0
)


class Authorizer(Protocol):
    """Decide whether a principal may perform an action on a patient's data."""

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = Purpose.PURPOSE_TREATMENT,
        organization_id: str = "",
    ) -> Decision: ...


@runtime_checkable
class BatchAuthorizer(Protocol):
    """Authorizer that decides one action for many patients in one call."""

    async def check_many(
        self,
        principal: Principal,
        *,
        action: str,
        patient_ids: Sequence[str],
        purpose: int = Purpose.PURPOSE_TREATMENT,
        organization_id: str = "",
    ) -> dict[str, Decision]: ...


def parse_action(action: str) -> tuple[str, str, str]:
    """Split ``<context>.<category>.<verb>``; raise ValueError when malformed."""
    parts = action.split(".")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"action {action!r} is not <context>.<category>.<verb>")
    context, category, verb = parts
    if category not in CATEGORIES:
        raise ValueError(
            f"action {action!r} has unknown category {category!r}; expected one "
            f"of {', '.join(sorted(CATEGORIES))}"
        )
    if verb not in VERBS:
        raise ValueError(f"action {action!r} has verb {verb!r}; expected read or write")
    return context, category, verb


def mark_decided() -> None:
    """Note that the call being served reached an access decision."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        _decided_in_span.set(span_context.span_id)


def decided_in_current_call() -> bool:
    """Return True when the call being served reached an access decision."""
    span_context = trace.get_current_span().get_span_context()
    return span_context.is_valid and _decided_in_span.get() == span_context.span_id


class RolePolicyAuthorizer:
    """Role permissions only, for running one service without svc_authz.

    It ignores care relationships and consent, so a network always
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
    mark_decided()
    if not decision.allowed:
        raise PermissionDenied(
            f"{action} denied: {decision.reason}",
            reason="ACCESS_DENIED",
            metadata={"action": action},
        )
    return decision


async def authorize_patients(
    authorizer: Authorizer,
    *,
    action: str,
    patient_ids: Sequence[str],
    purpose: int = Purpose.PURPOSE_TREATMENT,
    organization_id: str = "",
) -> dict[str, Decision]:
    """Decide ``action`` for each patient a search or export touches.

    Returns the decision per patient id; the caller removes the patients whose
    decision is not allowed. Raises Unauthenticated for an anonymous caller.
    """
    principal = current_principal()
    if principal.kind is PrincipalKind.ANONYMOUS:
        raise Unauthenticated(
            "this call needs a bearer token", reason="MISSING_CREDENTIALS"
        )
    unique = list(dict.fromkeys(patient_ids))
    if isinstance(authorizer, BatchAuthorizer):
        decisions = await authorizer.check_many(
            principal,
            action=action,
            patient_ids=unique,
            purpose=purpose,
            organization_id=organization_id,
        )
    else:
        decisions = {}
        for patient_id in unique:
            decisions[patient_id] = await authorizer.check(
                principal,
                action=action,
                patient_id=patient_id,
                purpose=purpose,
                organization_id=organization_id,
            )
    mark_decided()
    return decisions
