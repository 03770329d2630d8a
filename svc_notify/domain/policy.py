"""Delivery policy: channels, language, escalation targets and retry delays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb

IN_APP = events.CHANNEL_IN_APP
EMAIL = events.CHANNEL_EMAIL
SMS = events.CHANNEL_SMS
WEBHOOK = events.CHANNEL_WEBHOOK
EXTERNAL_CHANNELS = (EMAIL, SMS, WEBHOOK)

#: Maximum wait between two attempts of one delivery, in seconds.
MAX_RETRY_DELAY_SECONDS = 3600.0

#: Escalation levels: who is notified at each step of a critical result alert.
LEVEL_ORDERING_CLINICIAN = 0
LEVEL_NEXT_ON_CALL = 1
LEVEL_DEPARTMENT_HEAD = 2
LAST_LEVEL = LEVEL_DEPARTMENT_HEAD


def external_channels(chosen: Sequence[int] | None, priority: int) -> list[int]:
    """Return the external channels of one notification, in a fixed order.

    Without stored preferences a recipient gets e-mail, and urgent
    notifications also go by SMS. In-app delivery is always on and is not
    listed here.
    """
    if chosen is None:
        defaults: list[int] = [EMAIL]
        if priority == pb.NOTIFICATION_PRIORITY_URGENT:
            defaults.append(SMS)
        return defaults
    return [int(channel) for channel in EXTERNAL_CHANNELS if channel in chosen]


def retry_delay(attempts: int, base_seconds: float) -> float:
    """Return the wait after ``attempts`` failed attempts: base, 2x, 4x, ..."""
    exponent = max(attempts - 1, 0)
    return min(base_seconds * (2**exponent), MAX_RETRY_DELAY_SECONDS)


@dataclass(frozen=True)
class Roster:
    """On-call order and head of one department."""

    department: str
    on_call: Sequence[str]
    head: str


def escalation_targets(
    ordering_practitioner_id: str, rosters: Sequence[Roster]
) -> dict[int, str]:
    """Return the practitioner to tell at levels 1 and 2 of an escalation.

    The roster is the department roster that lists the ordering clinician, or
    else the organization's default roster (department ""). Level 1 is the
    next clinician after the ordering one in the on-call order, wrapping
    around, or the first one when the ordering clinician is not on call. A
    level without a practitioner maps to "".
    """
    roster = next(
        (r for r in rosters if ordering_practitioner_id in r.on_call), None
    ) or next((r for r in rosters if r.department == ""), None)
    if roster is None:
        return {LEVEL_NEXT_ON_CALL: "", LEVEL_DEPARTMENT_HEAD: ""}
    order = list(roster.on_call)
    if ordering_practitioner_id in order:
        start = order.index(ordering_practitioner_id) + 1
        order = order[start:] + order[:start]
    candidates = [p for p in order if p != ordering_practitioner_id]
    return {
        LEVEL_NEXT_ON_CALL: candidates[0] if candidates else "",
        LEVEL_DEPARTMENT_HEAD: roster.head,
    }


def on_call_now(department: str, rosters: Sequence[Roster]) -> str:
    """Return the first on-call practitioner of a department or the default."""
    for wanted in (department, ""):
        for roster in rosters:
            if roster.department == wanted and roster.on_call:
                return roster.on_call[0]
    return ""
