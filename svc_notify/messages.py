"""Conversions between stored rows and NotifyService messages."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hin.notify.v1 import notify_service_pb2 as pb
from svc_notify import store
from svc_notify.tables import (
    DeliveryRow,
    NotificationRow,
    PreferencesRow,
    RoleMembersRow,
    RosterRow,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class InvalidPageToken(ValueError):
    """A page token was not issued by this service."""


def notification_message(row: NotificationRow) -> pb.Notification:
    """Convert a stored notification."""
    return pb.Notification(
        notification_id=row.notification_id,
        recipient=row.recipient,
        sequence_id=row.sequence_id,
        kind=row.kind,  # type: ignore[arg-type]
        priority=row.priority,  # type: ignore[arg-type]
        patient_id=row.patient_id,
        language=row.language,
        title=row.title,
        body=row.body,
        source_event_id=row.source_event_id,
        source_event_type=row.source_event_type,
        created_at=timestamp(row.created_at),
        attributes=json.loads(row.attributes),
    )


def delivery_message(row: DeliveryRow) -> pb.Delivery:
    """Convert a delivery log row."""
    message = pb.Delivery(
        delivery_id=row.delivery_id,
        notification_id=row.notification_id,
        recipient=row.recipient,
        channel=row.channel,  # type: ignore[arg-type]
        status=row.status,  # type: ignore[arg-type]
        attempts=row.attempts,
        last_error=row.last_error,
        source_event_id=row.source_event_id,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
    )
    if row.next_attempt_at is not None:
        message.next_attempt_at.CopyFrom(timestamp(row.next_attempt_at))
    return message


def preferences_message(row: PreferencesRow) -> pb.Preferences:
    """Convert stored preferences; the webhook secret never leaves the store."""
    message = pb.Preferences(
        recipient=row.recipient,
        channels=[int(c) for c in row.channels.split(",") if c],  # type: ignore[misc]
        language=row.language,
        time_zone=row.time_zone,
        email=row.email,
        phone=row.phone,
        webhook_url=row.webhook_url,
        webhook_secret_set=bool(row.webhook_secret),
        version=row.version,
    )
    if row.quiet_start_minute is not None:
        message.quiet_hours.start.hours = row.quiet_start_minute // 60
        message.quiet_hours.start.minutes = row.quiet_start_minute % 60
        end = row.quiet_end_minute or 0
        message.quiet_hours.end.hours = end // 60
        message.quiet_hours.end.minutes = end % 60
    return message


def roster_message(row: RosterRow) -> pb.OnCallRoster:
    """Convert a stored roster."""
    return pb.OnCallRoster(
        organization_id=row.organization_id,
        department=row.department,
        on_call_practitioner_ids=store.id_list(row.on_call_practitioner_ids),
        department_head_practitioner_id=row.department_head_practitioner_id,
        version=row.version,
    )


def role_members_message(row: RoleMembersRow) -> pb.SetRoleMembersResponse:
    """Convert stored role members."""
    return pb.SetRoleMembersResponse(
        organization_id=row.organization_id,
        role=row.role,
        practitioner_ids=store.id_list(row.practitioner_ids),
        version=row.version,
    )


def timestamp(moment: datetime) -> Timestamp:
    """Convert a stored time to a Timestamp."""
    result = Timestamp()
    result.FromDatetime(store.aware(moment))
    return result


def page_size(requested: int) -> int:
    """Apply the default and the cap of PageRequest.page_size."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(position: int) -> str:
    """Encode a position in a list as an opaque page token."""
    return base64.urlsafe_b64encode(f"p:{position}".encode()).decode()


def decode_token(token: str) -> int | None:
    """Decode a page token; None for the first page.

    Raises:
        InvalidPageToken: when the token was not made by encode_token.
    """
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, number = text.partition(":")
        position = int(number)
    except (ValueError, UnicodeDecodeError):
        raise InvalidPageToken(token) from None
    if prefix != "p" or position < 0:
        raise InvalidPageToken(token)
    return position
