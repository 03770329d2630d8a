"""Dispatcher: turn stored intents into notifications for allowed recipients.

Event handlers only store intents, in the consumer's transaction. This
background task expands role recipients, checks with the authorizer whether each
recipient may know about the patient, and then, in one transaction per
intent, writes the notifications, their in-app and external delivery rows,
and marks the intent done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import Session

from hin.notify.v1 import notify_service_pb2 as pb
from mesh.runtime.authz import Authorizer
from mesh.runtime.storage import Database
from svc_notify import store
from svc_notify.config import NotifySettings
from svc_notify.domain import policy
from svc_notify.domain.recipients import (
    ON_CALL_ROLE,
    InvalidRecipient,
    Recipient,
    RecipientKind,
    parse_recipient,
    patient,
    practitioner,
    recipient_principal,
)
from svc_notify.domain.templates import render
from svc_notify.feed import DELIVER, DISPATCH, Wakeups, stream_key, wait_for
from svc_notify.tables import IntentRow, NotificationRow

logger = logging.getLogger(__name__)

READ_ACTION = "notify.notification.read"
#: Kinds whose recipient must act; when they may not be told, the alert moves
#: to the next level without waiting for the escalation delay.
CRITICAL_KINDS = frozenset(
    {
        pb.NOTIFICATION_KIND_CRITICAL_RESULT,
        pb.NOTIFICATION_KIND_CRITICAL_RESULT_ESCALATED,
    }
)
#: Intents handled per database round.
BATCH_SIZE = 50
#: Recipients whose intents are dispatched at the same time.
CONCURRENT_RECIPIENTS = 8


@dataclass(frozen=True)
class Verdicts:
    """Recipients of one intent, split by the consent check."""

    allowed: list[Recipient]
    denied: list[Recipient]


class Dispatcher:
    """Background task that turns pending intents into notifications."""

    def __init__(
        self,
        *,
        db: Database,
        authorizer: Authorizer,
        settings: NotifySettings,
        wakeups: Wakeups,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._authorizer = authorizer
        self._settings = settings
        self._wakeups = wakeups
        self._clock = clock

    async def run(self) -> None:
        """Dispatch until cancelled; an unexpected error is logged and retried."""
        logger.info("notification dispatcher started")
        while True:
            waiter = self._wakeups.waiter(DISPATCH)
            try:
                handled = await self.dispatch_due()
            except Exception:
                logger.exception("notification dispatch round failed; retrying")
                handled = 0
            if handled < BATCH_SIZE:
                await wait_for(waiter, self._settings.poll_seconds)

    async def dispatch_due(self) -> int:
        """Dispatch every due intent once; return how many were handled.

        Intents for different recipients are dispatched concurrently, so the
        access checks, which are calls to svc_authz, overlap. One recipient's
        intents stay in order, because their stream's sequence ids are given
        out in commit order.
        """
        intents = await self._db.run(store.due_intents, self._clock(), BATCH_SIZE)
        by_recipient: dict[str, list[IntentRow]] = {}
        for intent in intents:
            by_recipient.setdefault(intent.recipient, []).append(intent)
        limit = asyncio.Semaphore(CONCURRENT_RECIPIENTS)

        async def dispatch_in_order(queue: list[IntentRow]) -> None:
            async with limit:
                for intent in queue:
                    await self._dispatch(intent)

        await asyncio.gather(*(dispatch_in_order(q) for q in by_recipient.values()))
        return len(intents)

    async def _dispatch(self, intent: IntentRow) -> None:
        try:
            recipients = await self._db.run(self._expand, intent)
            verdicts = await self._check_consent(intent, recipients)
            created = await self._db.run(self._commit, intent.id, verdicts)
        except Exception as exc:
            # An unreachable authorizer, a database error or a bug: keep the
            # intent and retry it later with backoff. Postponing it also lets
            # the intents behind it go first.
            logger.warning(
                "notification dispatch postponed",
                exc_info=True,
                extra={
                    "source_event_id": intent.source_event_id,
                    "error_type": type(exc).__name__,
                },
            )
            await self._db.run(
                self._postpone, intent.id, f"{type(exc).__name__}: {exc}"
            )
            return
        if created:
            self._wakeups.notify(DELIVER, *(stream_key(r) for r in created))

    def _expand(self, session: Session, intent: IntentRow) -> list[Recipient]:
        """Return the people and role streams an intent's recipient stands for."""
        try:
            recipient = parse_recipient(intent.recipient)
        except InvalidRecipient:
            logger.error(
                "intent has an invalid recipient; dropped",
                extra={"source_event_id": intent.source_event_id},
            )
            return []
        if recipient.kind is RecipientKind.PATIENT:
            # A merge may have been applied after the handler stored the
            # intent, because merges travel on the records topic.
            survivor = store.resolve_patient(session, recipient.id)
            contact = store.load_patient(session, survivor)
            if contact is not None and contact.deceased:
                return []
            return [patient(survivor)]
        if recipient.kind is RecipientKind.PRACTITIONER:
            return [recipient]
        expanded = [recipient]
        if recipient.id == ON_CALL_ROLE:
            department = json.loads(intent.attributes).get("department", "")
            rosters = [
                store.to_roster(row)
                for row in store.rosters_of(session, recipient.organization_id)
            ]
            on_call = policy.on_call_now(department, rosters)
            if on_call:
                expanded.append(practitioner(on_call))
        else:
            members = store.load_role_members(
                session, recipient.organization_id, recipient.id
            )
            if members is not None:
                expanded.extend(
                    practitioner(p) for p in store.id_list(members.practitioner_ids)
                )
        return list(dict.fromkeys(expanded))

    async def _check_consent(
        self, intent: IntentRow, recipients: list[Recipient]
    ) -> Verdicts:
        if not intent.patient_id:
            return Verdicts(allowed=recipients, denied=[])
        allowed, denied = [], []
        for recipient in recipients:
            decision = await self._authorizer.check(
                recipient_principal(recipient, intent.organization_id),
                action=READ_ACTION,
                patient_id=intent.patient_id,
                organization_id=intent.organization_id,
            )
            if decision.allowed:
                allowed.append(recipient)
            else:
                denied.append(recipient)
                logger.info(
                    "notification skipped: recipient may not know about the patient",
                    extra={
                        "recipient": str(recipient),
                        "patient_id": intent.patient_id,
                        "source_event_id": intent.source_event_id,
                        "reason": decision.reason,
                    },
                )
        return Verdicts(allowed=allowed, denied=denied)

    def _postpone(self, session: Session, intent_id: int | None, error: str) -> None:
        intent = session.get(IntentRow, intent_id)
        if intent is None or intent.status != store.INTENT_PENDING:
            return
        intent.attempts += 1
        delay = policy.retry_delay(intent.attempts, self._settings.retry_base_seconds)
        intent.next_attempt_at = self._clock() + timedelta(seconds=delay)
        intent.outcome = dump_outcome(error=error[:500])

    def _commit(
        self, session: Session, intent_id: int | None, verdicts: Verdicts
    ) -> list[str]:
        """Write the notifications of one intent; return the recipients notified."""
        intent = session.get(IntentRow, intent_id, with_for_update=True)
        if intent is None or intent.status != store.INTENT_PENDING:
            return []
        now = self._clock()
        created = []
        for recipient in verdicts.allowed:
            if self._notify(session, intent, str(recipient), now):
                created.append(str(recipient))
        intent.status = store.INTENT_DONE
        intent.outcome = dump_outcome(
            notified=[str(r) for r in verdicts.allowed],
            denied=[str(r) for r in verdicts.denied],
        )
        if verdicts.denied and not verdicts.allowed and intent.kind in CRITICAL_KINDS:
            self._escalate_now(session, intent, now)
        return created

    def _escalate_now(self, session: Session, intent: IntentRow, now: datetime) -> None:
        """Make the alert of a critical result due, because no one could be told."""
        result_id = json.loads(intent.attributes).get("result_id", "")
        for alert in store.open_alerts_of_result(session, result_id):
            alert.next_due_at = now
            logger.warning(
                "critical result recipient may not know about the patient; "
                "escalating at once",
                extra={"alert_id": alert.alert_id, "level": alert.level},
            )

    def _notify(
        self, session: Session, intent: IntentRow, recipient: str, now: datetime
    ) -> bool:
        if store.find_notification(session, intent.source_event_id, recipient):
            return False
        preferences = store.load_preferences(session, recipient)
        language = (
            preferences.language
            if preferences and preferences.language
            else self._settings.default_language
        )
        zone = ZoneInfo(
            preferences.time_zone
            if preferences and preferences.time_zone
            else self._settings.default_time_zone
        )
        text = render(intent.kind, language, json.loads(intent.attributes), zone)
        notification = NotificationRow(
            notification_id=str(uuid.uuid4()),
            recipient=recipient,
            sequence_id=store.next_sequence_id(session, recipient),
            kind=intent.kind,
            priority=intent.priority,
            patient_id=intent.patient_id,
            organization_id=intent.organization_id,
            language=language,
            title=text.title,
            summary=text.summary,
            body=text.body,
            source_event_id=intent.source_event_id,
            source_event_type=intent.source_event_type,
            attributes=intent.attributes,
            created_at=now,
        )
        session.add(notification)
        store.add_delivery(
            session,
            notification=notification,
            channel=policy.IN_APP,
            status=pb.DELIVERY_STATUS_SENT,
            now=now,
        )
        # Preferences without channels keep the default channels.
        chosen = (
            _channels(preferences.channels)
            if preferences and preferences.channels
            else None
        )
        for channel in policy.external_channels(chosen, intent.priority):
            store.add_delivery(
                session,
                notification=notification,
                channel=channel,
                status=pb.DELIVERY_STATUS_PENDING,
                now=now,
            )
        return True


def dump_outcome(
    *,
    notified: list[str] | None = None,
    denied: list[str] | None = None,
    error: str = "",
) -> str:
    """Describe what the dispatcher did with an intent, with opaque ids only."""
    outcome: dict[str, object] = {}
    if notified is not None:
        outcome["notified"] = notified
    if denied is not None:
        outcome["denied"] = denied
    if error:
        outcome["error"] = error
    return store.dump_json(outcome)


def _channels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]
