"""Critical result escalation: open alerts, escalate on timeout, stop on ack.

An alert is opened for every critical result version. The ordering clinician
is level 0. When the result is still unacknowledged ``escalation_seconds``
after a step, the next step notifies the next on-call clinician (level 1),
then the department head (level 2). Each step is stored, emitted as
CriticalAlertEscalated and delivered like any other notification. Due times
are stored, so escalation survives a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlmodel import Session

from hin.common.v1 import types_pb2 as common
from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from mesh.runtime.events import Outbox
from mesh.runtime.storage import Database
from svc_notify import store
from svc_notify.domain import policy
from svc_notify.domain.recipients import practitioner
from svc_notify.domain.rules import result_attributes
from svc_notify.feed import DISPATCH, Wakeups
from svc_notify.tables import CriticalAlertRow

logger = logging.getLogger(__name__)

ESCALATED_EVENT_TYPE = events.CriticalAlertEscalated.DESCRIPTOR.full_name


def open_alert(
    session: Session,
    *,
    outbox: Outbox,
    result: labs.TestResult,
    patient_id: str,
    organization_id: str,
    source_event_id: str,
    now: datetime,
    delay: timedelta,
) -> CriticalAlertRow | None:
    """Open the alert of a critical result version; None when it exists.

    The caller has already asked for the urgent notification to the ordering
    clinician. Without an ordering clinician the first escalation is due at
    once.
    """
    if store.find_alert(session, result.result_id, result.version) is not None:
        return None
    attributes = {
        **result_attributes(result),
        "patient_id": patient_id,
        "ordering_practitioner_id": result.ordering_practitioner_id or "-",
    }
    ordering = result.ordering_practitioner_id
    alert = CriticalAlertRow(
        alert_id=str(uuid.uuid4()),
        result_id=result.result_id,
        result_version=result.version,
        patient_id=patient_id,
        organization_id=organization_id,
        ordering_practitioner_id=ordering,
        level=policy.LEVEL_ORDERING_CLINICIAN,
        status=store.ALERT_OPEN,
        next_due_at=now + delay if ordering else now,
        attributes=store.dump_json(attributes),
        source_event_id=source_event_id,
        created_at=now,
    )
    session.add(alert)
    recipient = str(practitioner(ordering)) if ordering else ""
    event_id = _emit(session, outbox, alert, recipient, now) if ordering else ""
    store.add_step(
        session,
        alert_id=alert.alert_id,
        level=policy.LEVEL_ORDERING_CLINICIAN,
        recipient=recipient,
        event_id=event_id,
        now=now,
    )
    return alert


def acknowledge(
    session: Session,
    *,
    result_id: str,
    acknowledged_by: str,
    acknowledged_at: datetime,
) -> int:
    """Close the open alerts of a result; return how many were closed."""
    alerts = store.open_alerts_of_result(session, result_id)
    for alert in alerts:
        alert.status = store.ALERT_ACKNOWLEDGED
        alert.next_due_at = None
        alert.acknowledged_by = acknowledged_by
        alert.acknowledged_at = acknowledged_at
    return len(alerts)


class EscalationScanner:
    """Background task that escalates unacknowledged critical results."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        delay: timedelta,
        poll_seconds: float,
        wakeups: Wakeups,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._delay = delay
        # Scan often enough that a step is late by a fraction of the delay.
        self._interval = min(poll_seconds, delay.total_seconds() / 4)
        self._wakeups = wakeups
        self._clock = clock

    async def run(self) -> None:
        """Scan until cancelled; an unexpected error is logged and retried."""
        logger.info(
            "critical result escalation started",
            extra={"escalation_seconds": self._delay.total_seconds()},
        )
        while True:
            try:
                await self.escalate_due()
            except Exception:
                logger.exception("escalation scan failed; retrying")
            await asyncio.sleep(self._interval)

    async def escalate_due(self) -> int:
        """Escalate every alert that is due; return how many steps were taken."""
        alert_ids = await self._db.run(store.due_alert_ids, self._clock(), 100)
        stepped = 0
        for alert_id in alert_ids:
            try:
                if await self._db.run(self._escalate, alert_id):
                    stepped += 1
            except Exception:
                # One failing alert must not hold up the others; it is due
                # again at the next scan.
                logger.exception("escalation step failed", extra={"alert_id": alert_id})
        if stepped:
            self._wakeups.notify(DISPATCH)
        return stepped

    def _escalate(self, session: Session, alert_id: str) -> bool:
        """Take the next step of one alert, in one transaction."""
        now = self._clock()
        alert = store.lock_alert(session, alert_id)
        if alert is None or alert.status != store.ALERT_OPEN:
            return False
        if alert.next_due_at is None or store.aware(alert.next_due_at) > now:
            return False
        rosters = [
            store.to_roster(row)
            for row in store.rosters_of(session, alert.organization_id)
        ]
        targets = policy.escalation_targets(alert.ordering_practitioner_id, rosters)

        # Levels without a practitioner to notify are recorded and skipped at once.
        level = alert.level + 1
        while level <= policy.LAST_LEVEL:
            target = targets.get(level, "")
            recipient = str(practitioner(target)) if target else ""
            alert.level = level
            event_id = (
                _emit(session, self._outbox, alert, recipient, now) if target else ""
            )
            store.add_step(
                session,
                alert_id=alert.alert_id,
                level=level,
                recipient=recipient,
                event_id=event_id,
                now=now,
            )
            if target:
                self._ask_for_notification(session, alert, recipient, event_id, now)
                alert.next_due_at = now + self._delay
                logger.warning(
                    "critical result escalated",
                    extra={"alert_id": alert.alert_id, "level": level},
                )
                return True
            logger.warning(
                "no one to escalate the critical result to at this level",
                extra={"alert_id": alert.alert_id, "level": level},
            )
            level += 1
        alert.status = store.ALERT_EXHAUSTED
        alert.next_due_at = None
        # NOTE: after the department head, no one else is notified about a
        # result that stays unacknowledged.
        logger.error(
            "critical result still unacknowledged after the last escalation level",
            extra={"alert_id": alert.alert_id, "result_id": alert.result_id},
        )
        return True

    def _ask_for_notification(
        self,
        session: Session,
        alert: CriticalAlertRow,
        recipient: str,
        event_id: str,
        now: datetime,
    ) -> None:
        attributes = {**json.loads(alert.attributes), "level": str(alert.level)}
        store.add_intents(
            session,
            source_event_id=event_id,
            source_event_type=ESCALATED_EVENT_TYPE,
            intents=[
                store.NewIntent(
                    recipient=recipient,
                    kind=pb.NOTIFICATION_KIND_CRITICAL_RESULT_ESCALATED,
                    priority=pb.NOTIFICATION_PRIORITY_URGENT,
                    patient_id=alert.patient_id,
                    organization_id=alert.organization_id,
                    attributes=attributes,
                )
            ],
            now=now,
        )


def _emit(
    session: Session,
    outbox: Outbox,
    alert: CriticalAlertRow,
    recipient: str,
    now: datetime,
) -> str:
    event = events.CriticalAlertEscalated(
        context=common.EventContext(organization_id=alert.organization_id),
        result_id=alert.result_id,
        patient_id=alert.patient_id,
        level=alert.level,
        recipient=recipient,
    )
    event.escalated_at.FromDatetime(now)
    return outbox.add(session, event, key=alert.patient_id, subject=alert.result_id)
