"""Delivery worker: send pending e-mail, SMS and webhook deliveries.

The dispatcher logs every delivery as a row. This worker leases due rows and
sends them outside any transaction. It then records the outcome together with
a NotificationDelivered or NotificationFailed event. A failed send is retried
with exponential backoff until ``max_attempts``; a routine delivery that
falls into the recipient's quiet hours waits until they end.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import Session

from hin.common.v1 import types_pb2 as common
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from mesh.runtime.events import Outbox
from mesh.runtime.storage import Database
from svc_notify import store
from svc_notify.channels import DeliveryError, OutgoingMessage, Sender
from svc_notify.config import NotifySettings
from svc_notify.domain import policy
from svc_notify.domain.quiet_hours import QuietWindow
from svc_notify.domain.recipients import RecipientKind, parse_recipient
from svc_notify.domain.templates import footer
from svc_notify.feed import DELIVER, Wakeups, wait_for
from svc_notify.tables import DeliveryRow, NotificationRow, PreferencesRow

logger = logging.getLogger(__name__)

#: Deliveries leased per round; they are sent concurrently.
BATCH_SIZE = 20


@dataclass(frozen=True)
class Job:
    """Inputs of one delivery attempt, loaded in one transaction."""

    channel: int
    message: OutgoingMessage | None
    #: Why the delivery cannot be attempted, when message is None.
    skip_reason: str = ""
    #: End of the recipient's quiet hours, when the send must wait.
    defer_until: datetime | None = None
    #: True when the reason may go away, so the attempt counts and is retried.
    transient: bool = False


class DeliveryWorker:
    """Background task that sends external deliveries."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        settings: NotifySettings,
        senders: Mapping[int, Sender],
        wakeups: Wakeups,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._settings = settings
        self._senders = senders
        self._wakeups = wakeups
        self._clock = clock
        # The lease is longer than one send with its timeout, so another worker
        # takes a row over only after this one stopped or stalled.
        self._lease = timedelta(seconds=settings.send_timeout_seconds * 3 + 30)

    async def run(self) -> None:
        """Send until cancelled; an unexpected error is logged and retried."""
        logger.info("delivery worker started", extra={"channels": len(self._senders)})
        while True:
            waiter = self._wakeups.waiter(DELIVER)
            try:
                sent = await self.deliver_due()
            except Exception:
                logger.exception("delivery round failed; retrying")
                sent = 0
            if sent < BATCH_SIZE:
                await wait_for(waiter, self._settings.poll_seconds)

    async def close(self) -> None:
        """Close every sender's connections."""
        for sender in self._senders.values():
            await sender.close()

    async def deliver_due(self) -> int:
        """Attempt every due delivery once; return how many were attempted."""
        now = self._clock()
        ids = await self._db.run(
            store.claim_due_deliveries, now, now + self._lease, BATCH_SIZE
        )
        await asyncio.gather(*(self._deliver(delivery_id) for delivery_id in ids))
        return len(ids)

    async def _deliver(self, delivery_id: str) -> None:
        try:
            job = await self._db.run(self._prepare, delivery_id)
            if job is None:
                return
            if job.defer_until is not None:
                await self._db.run(self._defer, delivery_id, job.defer_until)
                return
            if job.message is None and job.transient:
                pending = DeliveryError(job.skip_reason)
                await self._db.run(self._record, delivery_id, pending)
                return
            if job.message is None:
                await self._db.run(self._skip, delivery_id, job.skip_reason)
                return
            error = await self._send(job)
            await self._db.run(self._record, delivery_id, error)
        except Exception as exc:
            logger.exception(
                "delivery attempt failed unexpectedly",
                extra={"delivery_id": delivery_id},
            )
            # Count the attempt so that a delivery that always fails this way
            # ends as failed. When even that write fails, the lease expires and
            # a later round tries the row again.
            error = DeliveryError(f"internal error: {type(exc).__name__}")
            try:
                await self._db.run(self._record, delivery_id, error)
            except Exception:
                logger.exception(
                    "recording the failed attempt failed",
                    extra={"delivery_id": delivery_id},
                )

    async def _send(self, job: Job) -> DeliveryError | None:
        assert job.message is not None
        sender = self._senders[job.channel]
        try:
            await asyncio.wait_for(
                sender.send(job.message), self._settings.send_timeout_seconds
            )
        except DeliveryError as exc:
            return exc
        except TimeoutError:
            return DeliveryError(
                f"send timed out after {self._settings.send_timeout_seconds:g} s"
            )
        return None

    def _prepare(self, session: Session, delivery_id: str) -> Job | None:
        """Load a delivery, its notification and the recipient's address."""
        delivery = store.load_delivery(session, delivery_id)
        if delivery is None or delivery.status != pb.DELIVERY_STATUS_PENDING:
            return None
        notification = session.get(NotificationRow, delivery.notification_id)
        if notification is None:
            return Job(delivery.channel, None, "notification not found")
        if delivery.channel not in self._senders:
            return Job(
                delivery.channel,
                None,
                f"channel {_channel_name(delivery.channel)} is not configured "
                "on this service",
            )

        preferences = store.load_preferences(session, delivery.recipient)
        defer_until = self._quiet_until(notification, preferences)
        if defer_until is not None:
            return Job(delivery.channel, None, defer_until=defer_until)

        recipient = parse_recipient(delivery.recipient)
        if recipient.kind is RecipientKind.PATIENT and delivery.channel in (
            policy.EMAIL,
            policy.SMS,
        ):
            if store.load_patient(session, recipient.id) is None:
                # The registration travels on the records topic and may be
                # applied after the event that caused this notification.
                return Job(
                    delivery.channel,
                    None,
                    "patient contact details are not known yet",
                    transient=True,
                )
        address, secret = self._address(session, delivery, preferences)
        if not address:
            return Job(
                delivery.channel,
                None,
                f"recipient has no address for {_channel_name(delivery.channel)}",
            )
        message = OutgoingMessage(
            delivery_id=delivery.delivery_id,
            notification_id=notification.notification_id,
            address=address,
            language=notification.language,
            title=notification.title,
            summary=notification.summary,
            footer=footer(notification.language, notification.notification_id),
            payload=webhook_payload(notification),
            secret=secret,
        )
        return Job(delivery.channel, message)

    def _quiet_until(
        self, notification: NotificationRow, preferences: PreferencesRow | None
    ) -> datetime | None:
        if notification.priority == pb.NOTIFICATION_PRIORITY_URGENT:
            return None
        if preferences is None or preferences.quiet_start_minute is None:
            return None
        window = QuietWindow(
            start=_minute_time(preferences.quiet_start_minute),
            end=_minute_time(preferences.quiet_end_minute or 0),
            zone=ZoneInfo(preferences.time_zone or self._settings.default_time_zone),
        )
        return window.end_if_quiet(self._clock())

    def _address(
        self,
        session: Session,
        delivery: DeliveryRow,
        preferences: PreferencesRow | None,
    ) -> tuple[str, str]:
        """Return the address and webhook secret of a delivery's recipient."""
        if delivery.channel == policy.WEBHOOK:
            if preferences is None:
                return "", ""
            return preferences.webhook_url, preferences.webhook_secret
        chosen = ""
        if preferences is not None:
            chosen = (
                preferences.email
                if delivery.channel == policy.EMAIL
                else (preferences.phone)
            )
        if chosen:
            return chosen, ""
        recipient = parse_recipient(delivery.recipient)
        if recipient.kind is not RecipientKind.PATIENT:
            return "", ""
        contact = store.load_patient(session, recipient.id)
        if contact is None:
            return "", ""
        return (
            contact.email if delivery.channel == policy.EMAIL else contact.phone
        ), ""

    def _defer(self, session: Session, delivery_id: str, until: datetime) -> None:
        delivery = store.load_delivery(session, delivery_id)
        if delivery is None or delivery.status != pb.DELIVERY_STATUS_PENDING:
            return
        delivery.next_attempt_at = until
        delivery.updated_at = self._clock()
        logger.info(
            "delivery deferred until quiet hours end",
            extra={"delivery_id": delivery_id, "until": until.isoformat()},
        )

    def _skip(self, session: Session, delivery_id: str, reason: str) -> None:
        delivery = store.load_delivery(session, delivery_id)
        if delivery is None or delivery.status != pb.DELIVERY_STATUS_PENDING:
            return
        delivery.status = pb.DELIVERY_STATUS_SKIPPED
        delivery.last_error = reason
        delivery.next_attempt_at = None
        delivery.updated_at = self._clock()
        logger.info(
            "delivery skipped",
            extra={"delivery_id": delivery_id, "reason": reason},
        )

    def _record(
        self, session: Session, delivery_id: str, error: DeliveryError | None
    ) -> None:
        """Store the outcome of one attempt and emit its event."""
        delivery = store.load_delivery(session, delivery_id)
        if delivery is None or delivery.status != pb.DELIVERY_STATUS_PENDING:
            return
        notification = session.get(NotificationRow, delivery.notification_id)
        now = self._clock()
        delivery.attempts += 1
        delivery.updated_at = now
        if error is None:
            delivery.status = pb.DELIVERY_STATUS_SENT
            delivery.last_error = ""
            delivery.next_attempt_at = None
            self._emit_delivered(session, delivery, notification)
            logger.info(
                "delivery sent",
                extra={"delivery_id": delivery_id, "attempts": delivery.attempts},
            )
            return

        delivery.last_error = str(error)
        if error.permanent or delivery.attempts >= self._settings.max_attempts:
            delivery.status = pb.DELIVERY_STATUS_FAILED
            delivery.next_attempt_at = None
            self._emit_failed(session, delivery, notification)
            logger.error(
                "delivery failed",
                extra={
                    "delivery_id": delivery_id,
                    "attempts": delivery.attempts,
                    "error": str(error),
                },
            )
            return

        delay = policy.retry_delay(delivery.attempts, self._settings.retry_base_seconds)
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        logger.warning(
            "delivery attempt failed; will retry",
            extra={
                "delivery_id": delivery_id,
                "attempts": delivery.attempts,
                "retry_in_s": delay,
                "error": str(error),
            },
        )

    def _emit_delivered(
        self,
        session: Session,
        delivery: DeliveryRow,
        notification: NotificationRow | None,
    ) -> None:
        event = events.NotificationDelivered(
            context=_context(notification),
            notification_id=delivery.notification_id,
            recipient=delivery.recipient,
            channel=delivery.channel,  # type: ignore[arg-type]
            source_event_id=delivery.source_event_id,
            attempts=delivery.attempts,
        )
        self._outbox.add(session, event, key=_key(delivery, notification))

    def _emit_failed(
        self,
        session: Session,
        delivery: DeliveryRow,
        notification: NotificationRow | None,
    ) -> None:
        event = events.NotificationFailed(
            context=_context(notification),
            notification_id=delivery.notification_id,
            recipient=delivery.recipient,
            channel=delivery.channel,  # type: ignore[arg-type]
            source_event_id=delivery.source_event_id,
            error=delivery.last_error,
        )
        self._outbox.add(session, event, key=_key(delivery, notification))


def webhook_payload(notification: NotificationRow) -> dict[str, object]:
    """Return the JSON document that a webhook receives."""
    return {
        "notification_id": notification.notification_id,
        "recipient": notification.recipient,
        "sequence_id": notification.sequence_id,
        "kind": pb.NotificationKind.Name(notification.kind),  # type: ignore[arg-type]
        "priority": pb.NotificationPriority.Name(
            notification.priority  # type: ignore[arg-type]
        ),
        "patient_id": notification.patient_id,
        "language": notification.language,
        "title": notification.title,
        "body": notification.body,
        "source_event_id": notification.source_event_id,
        "source_event_type": notification.source_event_type,
        "created_at": store.aware(notification.created_at).isoformat(),
        "attributes": json.loads(notification.attributes),
    }


def _context(notification: NotificationRow | None) -> common.EventContext:
    organization_id = notification.organization_id if notification else ""
    return common.EventContext(organization_id=organization_id)


def _key(delivery: DeliveryRow, notification: NotificationRow | None) -> str:
    # Events about a patient stay on that patient's partition.
    if notification is not None and notification.patient_id:
        return notification.patient_id
    return delivery.recipient


def _minute_time(minutes: int) -> time:
    return time(hour=minutes // 60, minute=minutes % 60)


def _channel_name(channel: int) -> str:
    return events.Channel.Name(channel)  # type: ignore[arg-type]
