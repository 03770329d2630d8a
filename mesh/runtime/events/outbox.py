"""Outbox: events written in the same transaction as the state change."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import uuid_utils
from google.protobuf.message import Message
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.orm import Session

from mesh.runtime.events.envelope import current_envelope, topic_for_event
from mesh.runtime.events.tables import (
    EVENT_ID_LENGTH,
    KEY_LENGTH,
    SUBJECT_LENGTH,
    outbox_table,
)
from mesh.runtime.principal import current_principal
from mesh.runtime.telemetry import current_trace_id

logger = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()

#: Session.info key, set while the session's transaction contains new outbox rows.
_PENDING_KEY = "hin_outbox_pending"


class Outbox:
    """Write events into the outbox table of the caller's transaction.

    The relay publishes them after the transaction committed, so an event is
    sent if and only if its state change was committed.
    """

    def __init__(self, *, service: str) -> None:
        self.service = service
        self.source = f"hin://{service}"
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def add(
        self, session: Session, event: Message, *, key: str, subject: str = ""
    ) -> str:
        """Add ``event`` to the outbox in ``session``'s transaction; return its id.

        ``event.context`` gets an event id (UUIDv7), the time, the trace id of
        the current span and the caller as actor, each only when it is empty.
        ``key`` is the aggregate id (almost always the patient id) and decides
        the partition, so one patient's events stay in order. ``subject`` is
        the CloudEvents subject; both must be opaque ids.

        Call it after the write of the state change. The relay publishes in
        the order of the outbox row ids, and on PostgreSQL that order is the
        commit order of one aggregate's events only when each transaction
        took the aggregate's row lock before it added its outbox row.

        Raises:
            ValueError: the event has no ``context`` field, ``key`` is empty,
                or a value is longer than its outbox column.
        """
        if not key:
            raise ValueError(
                f"outbox key of {event.DESCRIPTOR.full_name} is empty; pass the "
                "aggregate id (usually the patient id)"
            )
        _check_length("key", key, KEY_LENGTH)
        _check_length("subject", subject, SUBJECT_LENGTH)
        topic = topic_for_event(event)
        now = datetime.now(UTC)
        event_id = _fill_context(event, now)
        _check_length("event id", event_id, EVENT_ID_LENGTH)

        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        session.connection().execute(
            insert(outbox_table).values(
                event_id=event_id,
                topic=topic,
                key=key,
                event_type=event.DESCRIPTOR.full_name,
                source=self.source,
                subject=subject,
                payload=event.SerializeToString(deterministic=True),
                traceparent=carrier.get("traceparent", ""),
                tracestate=carrier.get("tracestate", ""),
                created_at=now,
                send_attempts=0,
                last_error="",
            )
        )
        self._wake_after_commit(session)
        logger.debug(
            "event added to outbox",
            extra={"event_id": event_id, "event_type": event.DESCRIPTOR.full_name},
        )
        return event_id

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every commit that added rows to the outbox.

        The listener runs on the committing thread and must return at once.
        """
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _wake_after_commit(self, session: Session) -> None:
        session.info[_PENDING_KEY] = True
        if not sa_event.contains(session, "after_commit", self._notify):
            sa_event.listen(session, "after_commit", self._notify)
            sa_event.listen(session, "after_rollback", _forget_pending)

    def _notify(self, session: Session) -> None:
        # A session may live on for more transactions; only a commit that
        # added rows wakes the relay.
        if not session.info.pop(_PENDING_KEY, False):
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def _check_length(name: str, value: str, limit: int) -> None:
    # SQLite ignores column lengths and PostgreSQL enforces them, so the
    # outbox checks them itself to behave the same on both.
    if len(value) > limit:
        raise ValueError(
            f"outbox {name} has {len(value)} characters, more than {limit}; "
            "use an opaque id such as a UUID"
        )


def _fill_context(event: Message, now: datetime) -> str:
    field = event.DESCRIPTOR.fields_by_name.get("context")
    if (
        field is None
        or field.message_type is None
        or (field.message_type.full_name != "hin.common.v1.EventContext")
    ):
        raise ValueError(
            f"{event.DESCRIPTOR.full_name} has no hin.common.v1.EventContext "
            "context = 1 field; every HIN event needs one"
        )
    context = event.context  # type: ignore[attr-defined]
    if not context.event_id:
        context.event_id = str(uuid_utils.uuid7())
    if not context.HasField("occurred_at"):
        context.occurred_at.FromDatetime(now)
    if not context.trace_id:
        context.trace_id = current_trace_id()
    if not context.actor:
        context.actor = current_principal().subject
    handled = current_envelope.get()
    if not context.causation_id and handled is not None:
        context.causation_id = handled.id
    return str(context.event_id)
