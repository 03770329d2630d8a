"""Access rules of the network: who may do what to which patient's data.

The rules are deny by default. A decision needs a role that permits the
action, and for an action on one patient also the scope of that role:

- ``own``: a patient reaches their own record only, plus schedules and the
  practitioner directory, which name no patient.
- ``care``: a clinician reaches a patient inside an open care relationship
  (appointment, admission or lab order) or inside a break-the-glass window.
- ``organization``: front-office and privacy staff reach the patients of
  their own hospital.
- ``none``: the role permits the action only when no patient is named, such as
  an administrator verifying the audit chain.

Data held by another hospital (the patient's managing organization) needs the
patient's consent for the caller's hospital and purpose, and research needs a
consent that names research even inside the same hospital. A break-the-glass
window also lifts the consent rule: it exists for emergency treatment, and
every access inside it is flagged and reported to the privacy officer.

Roles without clinical read permission get ``redact_clinical`` on every read,
so the calling service removes clinical fields (minimum necessary).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from hin.authz.v1 import events_pb2 as authz_events
from mesh.runtime.authz import parse_action

Purpose = authz_events.Purpose

ROLES = (
    "doctor",
    "nurse",
    "lab_technician",
    "receptionist",
    "billing_clerk",
    "patient",
    "privacy_officer",
    "administrator",
    "service",
)


class Scope(Enum):
    """Reach of a role's permissions over patients."""

    OWN = "own"
    CARE = "care"
    ORGANIZATION = "organization"
    NONE = "none"


@dataclass(frozen=True)
class RolePolicy:
    """Permissions of one role: (category, verb) pairs and their scope."""

    scope: Scope
    permissions: frozenset[tuple[str, str]]

    def permits(self, category: str, verb: str) -> bool:
        return (category, verb) in self.permissions


def _pairs(*items: str) -> frozenset[tuple[str, str]]:
    pairs = set()
    for item in items:
        category, _, verbs = item.partition(":")
        for verb in verbs:
            pairs.add((category, {"r": "read", "w": "write"}[verb]))
    return frozenset(pairs)


ROLE_POLICIES: Mapping[str, RolePolicy] = {
    "doctor": RolePolicy(
        Scope.CARE,
        _pairs(
            "demographics:rw",
            "clinical:rw",
            "schedule:rw",
            "consent:r",
            "notification:rw",
        ),
    ),
    "nurse": RolePolicy(
        Scope.CARE,
        _pairs("demographics:r", "clinical:rw", "schedule:rw", "notification:rw"),
    ),
    "lab_technician": RolePolicy(Scope.CARE, _pairs("demographics:r", "clinical:rw")),
    "receptionist": RolePolicy(
        Scope.ORGANIZATION,
        _pairs("demographics:rw", "schedule:rw", "consent:rw", "notification:rw"),
    ),
    "billing_clerk": RolePolicy(
        Scope.ORGANIZATION, _pairs("demographics:r", "billing:rw")
    ),
    "patient": RolePolicy(
        Scope.OWN,
        _pairs(
            "demographics:r",
            "clinical:r",
            "schedule:rw",
            "billing:r",
            "consent:rw",
            "audit:r",
            "notification:rw",
        ),
    ),
    # The privacy officer is told of every break-the-glass access, so they
    # read notifications about patients of their hospital.
    "privacy_officer": RolePolicy(
        Scope.ORGANIZATION,
        _pairs("demographics:r", "consent:rw", "audit:r", "notification:rw"),
    ),
    "administrator": RolePolicy(Scope.NONE, _pairs("admin:rw", "audit:r")),
}

#: Roles that may break the glass for a patient.
BREAK_GLASS_ROLES = frozenset({"doctor", "nurse"})


class SubjectKind(Enum):
    PERSON = "person"
    SERVICE = "service"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Subject:
    """Caller a decision is for, as the calling service authenticated it."""

    subject: str
    kind: SubjectKind
    roles: frozenset[str] = frozenset()
    organization_id: str = ""
    practitioner_id: str = ""
    patient_id: str = ""
    service_name: str = ""


@dataclass(frozen=True)
class Facts:
    """Facts about the patient and the caller at decision time, from the store.

    ``patient_id`` and ``own_patient_id`` are already resolved to the
    surviving record when a patient was merged.
    """

    patient_id: str = ""
    #: The caller's own patient record, for the ``own`` scope.
    own_patient_id: str = ""
    patient_known: bool = False
    #: Organization whose records contain the data: the request's organization,
    #: else the patient's managing organization.
    data_organization_id: str = ""
    #: Open care relationship between the caller's practitioner id and the
    #: patient (appointment or admission).
    practitioner_relationship: bool = False
    #: Open lab order for the patient at the caller's organization.
    lab_order_at_organization: bool = False
    break_glass: bool = False
    #: Active consents of the patient: (grantee organization or "", purposes).
    consents: tuple[tuple[str, frozenset[int]], ...] = ()
    #: Roles assigned in svc_authz to the caller in their organization.
    assigned_roles: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Outcome:
    """Result of applying the rules."""

    allowed: bool
    reason_code: str
    reason: str
    emergency: bool = False
    redact_clinical: bool = False


def decide(subject: Subject, *, action: str, purpose: int, facts: Facts) -> Outcome:
    """Apply the rules to one access.

    Raises:
        ValueError: ``action`` is not ``<context>.<category>.<read|write>``.
    """
    _, category, verb = parse_action(action)
    if subject.kind is SubjectKind.SERVICE:
        # Envoy's RBAC call policy already decided which services may call
        # which methods; a service principal reaching here was admitted by it.
        return Outcome(True, "SERVICE_IDENTITY", "service admitted by call policy")
    if subject.kind is not SubjectKind.PERSON:
        return Outcome(False, "UNAUTHENTICATED", "caller is not authenticated")

    roles = sorted(subject.roles | facts.assigned_roles)
    permitting = [
        role
        for role in roles
        if role in ROLE_POLICIES and ROLE_POLICIES[role].permits(category, verb)
    ]
    if not permitting:
        return Outcome(
            False,
            "ROLE_NOT_PERMITTED",
            f"no role of the caller ({', '.join(roles) or 'none'}) permits {action}",
        )

    outcomes = [
        _decide_for_role(role, subject, category, verb, purpose, facts)
        for role in permitting
    ]
    allowed = [o for o in outcomes if o.allowed]
    if allowed:
        # Prefer the least restricted allow: unredacted before redacted, and a
        # relationship before an emergency grant.
        return min(allowed, key=lambda o: (o.redact_clinical, o.emergency))
    return outcomes[0]


def _decide_for_role(
    role: str,
    subject: Subject,
    category: str,
    verb: str,
    purpose: int,
    facts: Facts,
) -> Outcome:
    policy = ROLE_POLICIES[role]
    redact = verb == "read" and not policy.permits("clinical", "read")
    if not facts.patient_id:
        # Schedules, slots and the practitioner directory contain no patient
        # data, so a patient may read them to book.
        directory_read = category == "schedule" and verb == "read"
        if policy.scope is Scope.OWN and not directory_read:
            return Outcome(
                False,
                "PATIENT_REQUIRED",
                f"role {role} acts only on the caller's own record; name the patient",
            )
        return Outcome(
            True,
            "ROLE_PERMITTED",
            f"role {role} permits this action",
            redact_clinical=redact,
        )
    if policy.scope is Scope.NONE:
        return Outcome(
            False, "NOT_PATIENT_SCOPED", f"role {role} has no access to patient data"
        )
    if policy.scope is Scope.OWN:
        if facts.own_patient_id and facts.own_patient_id == facts.patient_id:
            return Outcome(
                True,
                "OWN_RECORD",
                "patient reads their own record",
                redact_clinical=redact,
            )
        return Outcome(
            False, "NOT_OWN_RECORD", "a patient may reach only their own record"
        )
    if not facts.patient_known:
        return Outcome(
            False,
            "PATIENT_UNKNOWN",
            "the patient is not known to svc_authz yet; retry once the patient's "
            "registration has been processed",
        )

    emergency = False
    if policy.scope is Scope.CARE:
        related = (
            facts.lab_order_at_organization
            if role == "lab_technician"
            else facts.practitioner_relationship
        )
        if not related:
            if not facts.break_glass:
                return Outcome(
                    False,
                    "NO_CARE_RELATIONSHIP",
                    f"role {role} needs an open care relationship with the patient "
                    "or a break-the-glass grant",
                )
            emergency = True

    cross_organization = facts.data_organization_id != subject.organization_id
    if (
        cross_organization
        and not emergency
        and not _consented(subject.organization_id, purpose, facts)
    ):
        return Outcome(
            False,
            "CONSENT_REQUIRED",
            "the patient's data is held by another organization and no consent "
            "covers the caller's organization and purpose",
        )
    if purpose == Purpose.PURPOSE_RESEARCH and not _consented(
        subject.organization_id, purpose, facts
    ):
        return Outcome(
            False,
            "RESEARCH_CONSENT_REQUIRED",
            "research use needs a consent that names research",
        )
    if emergency:
        return Outcome(
            True,
            "BREAK_GLASS",
            "emergency access under a break-the-glass grant",
            emergency=True,
            redact_clinical=redact,
        )
    return Outcome(
        True,
        "ROLE_PERMITTED",
        f"role {role} permits this action",
        redact_clinical=redact,
    )


def _consented(organization_id: str, purpose: int, facts: Facts) -> bool:
    for grantee, purposes in facts.consents:
        if grantee and grantee != organization_id:
            continue
        if purposes:
            if purpose in purposes:
                return True
        elif purpose != Purpose.PURPOSE_RESEARCH:
            return True
    return False


def role_names(roles: Iterable[str]) -> list[str]:
    """Return the known roles among ``roles``, sorted."""
    return sorted(role for role in roles if role in ROLES)
