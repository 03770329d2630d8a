"""Field checks of NotifyService requests, collected into Violations."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from mesh.runtime.validation import Violations
from svc_notify.config import LANGUAGES
from svc_notify.domain.recipients import InvalidRecipient, Recipient, parse_recipient

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DEPARTMENT = re.compile(r"^[A-Za-z0-9._\-]{0,128}$")
MIN_SECRET_LENGTH = 16


def check_recipient(violations: Violations, text: str, field: str) -> Recipient | None:
    """Parse a recipient id, recording a violation when it is invalid."""
    if not text:
        violations.add(field, "is required")
        return None
    try:
        return parse_recipient(text)
    except InvalidRecipient as exc:
        violations.add(field, str(exc))
        return None


def check_page(violations: Violations, page: object, field: str = "page") -> None:
    """Check a PageRequest's size."""
    size = getattr(page, "page_size", 0)
    if size < 0:
        violations.add(f"{field}.page_size", f"must be 0 or more, got {size}")


def check_id(violations: Violations, value: str, field: str, *, required: bool) -> None:
    """Check an opaque id such as a practitioner or organization id."""
    if not value:
        if required:
            violations.add(field, "is required")
        return
    if not _ID.match(value):
        violations.add(
            field,
            "must be 1 to 128 letters, digits, '.', '_', ':' or '-', starting "
            "with a letter or digit",
        )


def check_preferences(
    violations: Violations,
    request: pb.SetPreferencesRequest,
    *,
    allow_private_webhooks: bool = False,
) -> Recipient | None:
    """Check every field of a SetPreferences request."""
    preferences = request.preferences
    recipient = check_recipient(
        violations, preferences.recipient, "preferences.recipient"
    )
    for index, channel in enumerate(preferences.channels):
        if channel not in events.Channel.values() or channel == 0:
            violations.add(
                f"preferences.channels[{index}]",
                f"must be CHANNEL_IN_APP, CHANNEL_EMAIL, CHANNEL_SMS or "
                f"CHANNEL_WEBHOOK, got {channel}",
            )

    if preferences.language and preferences.language not in LANGUAGES:
        violations.add(
            "preferences.language",
            f"must be one of {', '.join(LANGUAGES)}, got {preferences.language!r}",
        )
    if preferences.time_zone:
        try:
            ZoneInfo(preferences.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            violations.add(
                "preferences.time_zone",
                f"{preferences.time_zone!r} is not an IANA time zone such as "
                "Africa/Cairo",
            )
    if preferences.HasField("quiet_hours"):
        for name in ("start", "end"):
            clock = getattr(preferences.quiet_hours, name)
            if not 0 <= clock.hours <= 23:
                violations.add(
                    f"preferences.quiet_hours.{name}.hours",
                    f"must be 0 to 23, got {clock.hours}",
                )
            if not 0 <= clock.minutes <= 59:
                violations.add(
                    f"preferences.quiet_hours.{name}.minutes",
                    f"must be 0 to 59, got {clock.minutes}",
                )

    if preferences.email and not _EMAIL.match(preferences.email):
        violations.add("preferences.email", "is not an e-mail address")
    if preferences.phone and not _E164.match(preferences.phone):
        violations.add(
            "preferences.phone",
            "must be an E.164 number such as +201001234567",
        )
    if preferences.webhook_url:
        problem = webhook_url_problem(
            preferences.webhook_url, allow_private=allow_private_webhooks
        )
        if problem:
            violations.add("preferences.webhook_url", problem)
    if events.CHANNEL_WEBHOOK in preferences.channels and not preferences.webhook_url:
        violations.add(
            "preferences.webhook_url", "is required when CHANNEL_WEBHOOK is chosen"
        )

    if request.webhook_secret and len(request.webhook_secret) < MIN_SECRET_LENGTH:
        violations.add(
            "webhook_secret", f"must be at least {MIN_SECRET_LENGTH} characters"
        )
    if request.expected_version < 0:
        violations.add("expected_version", "must be 0 or more")
    return recipient


def webhook_url_problem(url: str, *, allow_private: bool = False) -> str:
    """Return why a webhook URL is unacceptable, or "" when it is fine.

    Webhooks must use https. A host given as a loopback, private or
    link-local address is rejected, so that a recipient cannot aim
    deliveries at the network's own services. ``allow_private`` lifts that
    rule for local receivers and tests, and then http is accepted for a
    loopback host too.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a URL"
    if not host:
        return "must be an absolute http(s) URL with a host"
    internal = _is_internal(host)
    if internal and not allow_private:
        return "must not point at a loopback, private or link-local address"
    if parts.scheme == "https":
        return ""
    if parts.scheme == "http" and allow_private and _is_loopback(host):
        return ""
    return "must use https"


def check_roster(violations: Violations, request: pb.SetOnCallRosterRequest) -> None:
    """Check every field of a SetOnCallRoster request."""
    roster = request.roster
    check_id(
        violations, roster.organization_id, "roster.organization_id", required=True
    )
    if not _DEPARTMENT.match(roster.department):
        violations.add(
            "roster.department",
            "must be up to 128 letters, digits, '.', '_' or '-'",
        )
    seen: set[str] = set()
    for index, practitioner_id in enumerate(roster.on_call_practitioner_ids):
        field = f"roster.on_call_practitioner_ids[{index}]"
        check_id(violations, practitioner_id, field, required=True)
        if practitioner_id in seen:
            violations.add(field, f"repeats practitioner {practitioner_id}")
        seen.add(practitioner_id)
    check_id(
        violations,
        roster.department_head_practitioner_id,
        "roster.department_head_practitioner_id",
        required=False,
    )
    if request.expected_version < 0:
        violations.add("expected_version", "must be 0 or more")


def check_role_members(
    violations: Violations, request: pb.SetRoleMembersRequest
) -> None:
    """Check every field of a SetRoleMembers request."""
    check_id(violations, request.organization_id, "organization_id", required=True)
    if not request.role:
        violations.add("role", "is required")
    elif not _ROLE.match(request.role):
        violations.add(
            "role",
            "must be lower-case letters, digits and '_', such as privacy_officer",
        )
    elif request.role == "on_call":
        violations.add(
            "role", "on_call is set through SetOnCallRoster, not SetRoleMembers"
        )
    seen: set[str] = set()
    for index, practitioner_id in enumerate(request.practitioner_ids):
        field = f"practitioner_ids[{index}]"
        check_id(violations, practitioner_id, field, required=True)
        if practitioner_id in seen:
            violations.add(field, f"repeats practitioner {practitioner_id}")
        seen.add(practitioner_id)
    if request.expected_version < 0:
        violations.add("expected_version", "must be 0 or more")


def _is_internal(host: str) -> bool:
    # NOTE: a DNS name that resolves to an internal address passes this check;
    # only names and literals known to be internal are caught here.
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_reserved
        or address.is_multicast
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
