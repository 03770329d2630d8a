"""Event consumer: handlers with an inbox, retries, dead letters, trace context."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage
from google.protobuf.message import DecodeError, Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from mesh.runtime.events import envelope as env
from mesh.runtime.events.envelope import Envelope, current_envelope
from mesh.runtime.events.kafka_log import KAFKA_LOGGER
from mesh.runtime.events.tables import EVENT_ID_LENGTH, inbox_table
from mesh.runtime.events.topic_watch import TopicWatch
from mesh.runtime.principal import Principal, PrincipalKind, set_principal
from mesh.runtime.storage import Database

logger = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()

E = TypeVar("E", bound=Message)

#: Seconds during which a repeated poll error is logged once.
POLL_ERROR_WINDOW = 30.0

#: Called with the envelope and whether the event was applied (False: it was
#: applied before) after the transaction committed and before the offset
#: commit. Tests use it to crash at that point.
TransactionHook = Callable[[Envelope, bool], None]


@dataclass(frozen=True)
class Handler(Generic[E]):
    """Bind one protobuf event type to ``fn(session, event, envelope)``.

    The consumer runs ``fn`` and writes the inbox row in one transaction, so
    the effect is applied once per consumer group however often the record is
    delivered. ``fn`` must not commit the session.
    """

    event_type: type[E]
    fn: Callable[[Session, E, Envelope], None]

    @property
    def type_name(self) -> str:
        """Full protobuf name of the event type, as in the ``ce_type`` header."""
        return str(self.event_type.DESCRIPTOR.full_name)

    @property
    def topic(self) -> str:
        """Topic the event type is published on."""
        return env.topic_for_event(self.event_type)


@dataclass(frozen=True)
class ConsumerOptions:
    """Retry policy and timing of one consumer."""

    #: Handler attempts before the record goes to the dead-letter topic.
    max_attempts: int = 5
    #: First wait between attempts, in seconds; it doubles up to backoff_max.
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    #: Maximum wait inside one poll, in seconds. It bounds how long stop() waits
    #: for an idle consumer.
    poll_timeout: float = 0.2


def consumer_config(
    *, bootstrap: str, group_id: str, client_id: str, extra: Mapping[str, str]
) -> dict[str, Any]:
    """Build the librdkafka settings of a consumer that commits by hand.

    Keys in ``extra`` (HIN_KAFKA_CONFIG) override the defaults unchanged.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        # Offsets are committed only after the handler's transaction
        # committed, record by record.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A new group, or a broker that lost its committed offsets, starts
        # from the oldest record; the inbox skips what was applied.
        "auto.offset.reset": "earliest",
        # A group's first assignment comes after about half the session
        # timeout on the embedded broker; production may raise it.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1500,
        # The embedded broker never returns a waiting fetch early, so this
        # bounds the produce-to-consume latency.
        "fetch.wait.max.ms": 10,
        # A consumer notices a subscribed topic that appeared (again, after a
        # broker restart) only at a metadata refresh; librdkafka's default
        # is five minutes.
        "topic.metadata.refresh.interval.ms": 5000,
        "logger": KAFKA_LOGGER,
    }
    config.update(extra)
    return config


class _Stopping(Exception):
    """The consumer is stopping while a record waits for its next attempt."""


class InvalidEvent(Exception):
    """A record cannot be handled at all: undecodable payload or no event id."""


class EventConsumer:
    """Poll Kafka on a thread of its own and apply each record once.

    For each record, the consumer:

    1. skips it when no handler is registered for its ``ce_type``;
    2. decodes it, and sends an undecodable payload to the DLQ at once;
    3. runs the handler and writes the inbox row in one transaction,
       retrying with exponential backoff;
    4. sends it to ``<topic>.dlq`` with the error in its headers after
       ``max_attempts`` failures;
    5. commits its offset.

    All of this runs on the consumer's own thread, never on the asyncio loop.
    """

    def __init__(
        self,
        *,
        service: str,
        db: Database,
        handlers: Sequence[Handler[Any]],
        topics: Sequence[str],
        consumer_config: Mapping[str, Any],
        producer_config: Mapping[str, Any],
        tracer_provider: trace.TracerProvider,
        options: ConsumerOptions = ConsumerOptions(),
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        after_transaction: TransactionHook | None = None,
        ensure_topics: Callable[[], None] | None = None,
    ) -> None:
        self._service = service
        self._db = db
        self._handlers = _index_handlers(handlers)
        self._topics = list(topics)
        self._consumer_config = dict(consumer_config)
        self.group_id = str(self._consumer_config["group.id"])
        self._producer_config = dict(producer_config)
        self._tracer = tracer_provider.get_tracer("mesh.runtime.events.consumer")
        self._options = options
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._after_transaction = after_transaction
        self._ensure_topics = ensure_topics
        self._dlq_producer: Producer | None = None
        self._topic_watch = TopicWatch(
            topics=self._topics, admin_config=_admin_config(self._consumer_config)
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error_logged_at: dict[str, float] = {}
        #: Set once the group assigned partitions to this consumer.
        self.assigned = threading.Event()
        self._principal = Principal(
            subject=f"spiffe://hin.local/svc/{service}",
            kind=PrincipalKind.SERVICE,
            service_name=service,
        )

    def start(self) -> None:
        """Subscribe and start the poll thread."""
        if self._thread is not None:
            return
        consumer = self._consumer_factory(self._consumer_config)
        self._subscribe(consumer)
        self._thread = threading.Thread(
            target=self._run,
            args=(consumer,),
            name=f"event-consumer-{self._service}",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "event consumer started",
            extra={"group_id": self.group_id, "topics": self._topics},
        )

    def stop(self, timeout: float) -> bool:
        """Finish the record in hand, commit, leave the group; False on timeout."""
        if self._thread is None:
            return True
        self._stopping.set()
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if not stopped:
            logger.warning(
                "event consumer did not stop in time", extra={"timeout_s": timeout}
            )
        self._thread = None
        return stopped

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info(
            "partitions assigned",
            extra={
                "group_id": self.group_id,
                "partitions": [f"{p.topic}[{p.partition}]" for p in partitions],
            },
        )
        self.assigned.set()

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _resubscribe(self, consumer: Consumer) -> None:
        # A re-created topic keeps the group on an empty assignment until it
        # joins again, and its committed offsets are gone with the old topic,
        # so the new assignment starts from auto.offset.reset (earliest).
        logger.warning(
            "subscribed topic was re-created; joining the group again",
            extra={"group_id": self.group_id},
        )
        consumer.unsubscribe()
        self._subscribe(consumer)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info(
            "partitions revoked",
            extra={
                "group_id": self.group_id,
                "partitions": [f"{p.topic}[{p.partition}]" for p in partitions],
            },
        )

    def _run(self, consumer: Consumer) -> None:
        set_principal(self._principal)
        try:
            while not self._stopping.is_set():
                try:
                    self._poll_once(consumer)
                except Exception:
                    # The record in hand, if any, was rewound or never taken;
                    # the loop goes on after a pause rather than stop consuming.
                    logger.exception("event consumer step failed; retrying")
                    self._stopping.wait(self._options.backoff_max)
        finally:
            consumer.close()
            self._close_dlq_producer()
            logger.info("event consumer stopped", extra={"group_id": self.group_id})

    def _poll_once(self, consumer: Consumer) -> None:
        if self._topic_watch.check():
            self._resubscribe(consumer)
        message = consumer.poll(self._options.poll_timeout)
        if message is None:
            return
        error = message.error()
        if error is not None:
            self._log_poll_error(error)
            return
        try:
            done = self._process(message)
        except Exception:
            self._rewind(consumer, message)
            raise
        if done:
            self._commit(consumer, message)
        else:
            # The record stays unapplied: read it again after a pause.
            self._rewind(consumer, message)
            self._stopping.wait(self._options.backoff_max)

    def _process(self, message: KafkaMessage) -> bool:
        """Handle one record; return True when its offset may be committed."""
        headers = env.decode_headers(message.headers())
        handler = self._handlers.get(headers.get("ce_type", ""))
        if handler is None:
            logger.debug(
                "no handler for event type; skipped",
                extra={"event_type": headers.get("ce_type", "")},
            )
            return True

        parent = _propagator.extract(headers)
        span = self._tracer.start_span(
            f"{message.topic()} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": message.topic() or "",
                "messaging.consumer.group.name": self.group_id,
                "messaging.kafka.destination.partition": message.partition() or 0,
                "messaging.kafka.offset": message.offset() or 0,
                "messaging.message.id": headers.get("ce_id", ""),
                "cloudevents.event_type": handler.type_name,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            return self._process_in_span(message, headers, handler, span)
        finally:
            otel_context.detach(token)
            span.end()

    def _process_in_span(
        self,
        message: KafkaMessage,
        headers: dict[str, str],
        handler: Handler[Any],
        span: trace.Span,
    ) -> bool:
        try:
            event, envelope = _decode(message, headers, handler)
        except InvalidEvent as exc:
            span.set_status(Status(StatusCode.ERROR, "invalid event"))
            return self._dead_letter(message, exc, attempts=1)

        try:
            applied = self.apply_with_retries(handler, event, envelope)
        except _Stopping:
            return False
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            if _is_transient_infrastructure_error(exc):
                logger.warning(
                    "database unavailable; the record will be read again",
                    extra={"event_id": envelope.id, "error_type": type(exc).__name__},
                )
                return False
            return self._dead_letter(message, exc, attempts=self._options.max_attempts)

        if self._after_transaction is not None:
            self._after_transaction(envelope, applied)
        logger.info(
            "event applied" if applied else "event already applied; skipped",
            extra={
                "event_id": envelope.id,
                "event_type": envelope.type,
                "topic": envelope.topic,
                "partition": envelope.partition,
                "offset": envelope.offset,
            },
        )
        return True

    def apply_with_retries(
        self, handler: Handler[Any], event: Message, envelope: Envelope
    ) -> bool:
        """Apply the event with the retry policy; return False if applied before.

        Raises the last error after ``max_attempts`` failed attempts. A
        BaseException that is not an Exception (cancellation, KeyboardInterrupt,
        SystemExit) is raised at once.
        """
        retrying = Retrying(
            stop=stop_after_attempt(self._options.max_attempts),
            wait=wait_exponential(
                multiplier=self._options.backoff_initial,
                min=self._options.backoff_initial,
                max=self._options.backoff_max,
            ),
            # Only ordinary errors are retried: cancellation, KeyboardInterrupt
            # and SystemExit are BaseExceptions and pass straight through.
            retry=retry_if_exception(_is_retryable),
            sleep=self._sleep,
            before_sleep=self._log_retry(envelope),
            reraise=True,
        )
        return bool(
            retrying(
                apply_event,
                self._db,
                group_id=self.group_id,
                handler=handler,
                event=event,
                envelope=envelope,
            )
        )

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Stopping()

    def _log_retry(self, envelope: Envelope) -> Callable[[RetryCallState], None]:
        def log(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            logger.warning(
                "event handler failed; retrying",
                extra={
                    "event_id": envelope.id,
                    "event_type": envelope.type,
                    "attempt": state.attempt_number,
                    "max_attempts": self._options.max_attempts,
                    "error_type": type(error).__name__,
                },
            )

        return log

    def _dead_letter(
        self, message: KafkaMessage, error: BaseException, *, attempts: int
    ) -> bool:
        """Send the record to ``<topic>.dlq``; return False if that failed."""
        topic = message.topic() or ""
        headers: list[tuple[str, str | bytes | None]] = [
            (name, value)
            for name, value in env.header_items(message.headers())
            if name not in env.DLQ_HEADERS
        ]
        headers += [
            (env.DLQ_ERROR_TYPE, type(error).__name__.encode()),
            (env.DLQ_ERROR_MESSAGE, _error_text(error).encode()),
            (env.DLQ_ATTEMPTS, str(attempts).encode()),
            (env.DLQ_ORIGINAL_TOPIC, topic.encode()),
            (env.DLQ_ORIGINAL_PARTITION, str(message.partition()).encode()),
            (env.DLQ_ORIGINAL_OFFSET, str(message.offset()).encode()),
            (env.DLQ_CONSUMER_GROUP, self.group_id.encode()),
            (env.DLQ_FAILED_AT, env.format_time(datetime.now(UTC)).encode()),
        ]
        reports: list[KafkaError | None] = []
        try:
            producer = self._current_dlq_producer()
            producer.produce(
                env.dlq_topic(topic),
                value=message.value(),
                key=message.key(),
                headers=headers,
                on_delivery=lambda err, _msg: reports.append(err),
            )
            producer.flush(10.0)
        except (KafkaException, BufferError) as exc:
            logger.warning("dead-lettering failed", extra={"error": str(exc)})
            self._recover_dlq()
            return False
        if not reports or reports[0] is not None:
            logger.warning(
                "dead-lettering not confirmed; the record will be read again",
                extra={"error": reports[0].name() if reports and reports[0] else ""},
            )
            self._recover_dlq()
            return False
        logger.warning(
            "record sent to the dead-letter topic",
            extra={
                "topic": topic,
                "partition": message.partition(),
                "offset": message.offset(),
                "error_type": type(error).__name__,
                "attempts": attempts,
            },
        )
        return True

    def _current_dlq_producer(self) -> Producer:
        if self._dlq_producer is None:
            self._dlq_producer = self._producer_factory(self._producer_config)
        return self._dlq_producer

    def _recover_dlq(self) -> None:
        # The DLQ topic may be missing after a broker restart, and the
        # producer does not create topics by itself.
        self._close_dlq_producer()
        if self._ensure_topics is not None:
            try:
                self._ensure_topics()
            except Exception as exc:
                logger.warning("creating topics failed", extra={"error": str(exc)})

    def _close_dlq_producer(self) -> None:
        producer, self._dlq_producer = self._dlq_producer, None
        if producer is not None:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)

    def _commit(self, consumer: Consumer, message: KafkaMessage) -> None:
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            # The record is applied and its inbox row written, so a
            # redelivery after this failure is skipped.
            logger.warning(
                "offset commit failed; the record may be delivered again",
                extra={"error": str(exc.args[0]), "offset": message.offset()},
            )

    def _rewind(self, consumer: Consumer, message: KafkaMessage) -> None:
        try:
            consumer.seek(
                TopicPartition(
                    message.topic() or "",
                    message.partition() or 0,
                    message.offset() or 0,
                )
            )
        except KafkaException as exc:
            logger.warning("seek failed", extra={"error": str(exc.args[0])})

    def _log_poll_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        # A missing topic or a broker that is down repeats the same error on
        # every poll, so each error name is logged at most once a window.
        now = time.monotonic()
        if now - self._error_logged_at.get(error.name(), -POLL_ERROR_WINDOW) < (
            POLL_ERROR_WINDOW
        ):
            return
        self._error_logged_at[error.name()] = now
        logger.warning(
            "consumer error", extra={"error": error.name(), "detail": error.str()}
        )


def apply_event(
    db: Database,
    *,
    group_id: str,
    handler: Handler[Any],
    event: Message,
    envelope: Envelope,
) -> bool:
    """Run the handler and write the inbox row in one transaction.

    Returns False, without running the handler, when the inbox shows that
    ``group_id`` applied the event before. An exception from the handler
    rolls back both its effect and the inbox row.
    """
    with db.transaction() as session, _bound(envelope):
        connection = session.connection()
        seen = connection.scalar(
            select(inbox_table.c.event_id)
            .where(inbox_table.c.consumer_group == group_id)
            .where(inbox_table.c.event_id == envelope.id)
        )
        if seen is not None:
            return False
        handler.fn(session, event, envelope)
        # The primary key (group, event id) also rejects a concurrent
        # duplicate. That transaction fails, and its retry finds this row.
        session.flush()
        connection.execute(
            insert(inbox_table).values(
                consumer_group=group_id,
                event_id=envelope.id,
                event_type=envelope.type,
                topic=envelope.topic,
                partition=envelope.partition,
                offset=envelope.offset,
                applied_at=datetime.now(UTC),
            )
        )
        return True


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, Exception) and not isinstance(error, _Stopping)


def _admin_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # The connection settings of the consumer, without its consumer settings.
    prefixes = ("bootstrap.", "security.", "ssl.", "sasl.", "socket.", "client.")
    return {key: value for key, value in config.items() if key.startswith(prefixes)}


def _index_handlers(handlers: Sequence[Handler[Any]]) -> dict[str, Handler[Any]]:
    index: dict[str, Handler[Any]] = {}
    for handler in handlers:
        if handler.type_name in index:
            raise ValueError(
                f"two handlers for {handler.type_name}; register one per event "
                "type and call both functions from it"
            )
        index[handler.type_name] = handler
    return index


def _decode(
    message: KafkaMessage, headers: dict[str, str], handler: Handler[Any]
) -> tuple[Message, Envelope]:
    try:
        event = handler.event_type.FromString(message.value() or b"")
    except DecodeError as exc:
        raise InvalidEvent(
            f"payload is not a valid {handler.type_name}: {exc}"
        ) from exc
    event_id = headers.get("ce_id", "")
    if not event_id and hasattr(event, "context"):
        event_id = event.context.event_id
    if not event_id:
        raise InvalidEvent(
            f"record of type {handler.type_name} has neither a ce_id header nor "
            "context.event_id, so it cannot be deduplicated"
        )
    if len(event_id) > EVENT_ID_LENGTH:
        raise InvalidEvent(
            f"event id of {len(event_id)} characters is longer than the inbox "
            f"column ({EVENT_ID_LENGTH}); HIN event ids are UUIDs"
        )
    key = message.key() or b""
    envelope = Envelope(
        id=event_id,
        source=headers.get("ce_source", ""),
        type=handler.type_name,
        time=env.parse_time(headers.get("ce_time", "")),
        subject=headers.get("ce_subject", ""),
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key,
        headers=headers,
    )
    return event, envelope


@contextmanager
def _bound(envelope: Envelope) -> Iterator[None]:
    token = current_envelope.set(envelope)
    try:
        yield
    finally:
        current_envelope.reset(token)


def _is_transient_infrastructure_error(error: BaseException) -> bool:
    # A lost connection or a locked SQLite file is not the record's fault, so
    # the record waits for the database instead of going to the DLQ.
    # NOTE: other OperationalErrors (a missing table) count as the record's
    # failure and dead-letter it.
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError) and "database is locked" in str(error)


def _error_text(error: BaseException) -> str:
    # Handlers raise errors with opaque ids only; the cap keeps one header
    # small even when a driver error quotes a long statement.
    return f"{error}"[:1000]
