"""Outbox relay: publish committed outbox rows to Kafka, in order, at least once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import Connection, Row, delete, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from mesh.runtime.events import envelope as env
from mesh.runtime.events.envelope import HeaderValue, cloudevents_headers
from mesh.runtime.events.kafka_log import KAFKA_LOGGER
from mesh.runtime.events.outbox import Outbox
from mesh.runtime.events.tables import inbox_table, outbox_table
from mesh.runtime.storage import Database

logger = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()

#: Batches in a row with failed delivery reports before the producer is
#: replaced.
REPLACE_AFTER_FAILURES = 3

#: Advisory lock key of the outbox relay, the same in every service database
#: (advisory locks are scoped to one database).
PUBLISHER_LOCK_KEY = 0x48494E4F5554  # "HINOUT"

ProducerFactory = Callable[[dict[str, Any]], Producer]
#: Called with the seq numbers of a batch after the broker confirmed them and
#: before they are marked sent. Tests use it to crash at that point.
DeliveryHook = Callable[[Sequence[int]], None]


class RelayError(RuntimeError):
    """The broker did not confirm every outbox row of a replay."""


@dataclass(frozen=True)
class RelayOptions:
    """Tuning of one relay; docs/platform.md lists the matching settings."""

    #: Fallback poll when no commit woke the relay, in seconds.
    poll_interval: float = 1.0
    #: Rows read and produced per round trip.
    batch_size: int = 500
    #: Time the broker gets to confirm a batch, in seconds. A producer that
    #: reports nothing by then is taken as stalled and replaced.
    delivery_timeout: float = 10.0
    #: Sent outbox rows older than this are deleted; None keeps them forever.
    outbox_retention: timedelta | None = timedelta(days=30)
    #: Inbox rows older than this are deleted; None keeps them forever.
    inbox_retention: timedelta | None = timedelta(days=90)
    #: Time between two prunes, in seconds.
    prune_interval: float = 3600.0


def producer_config(
    *, bootstrap: str, client_id: str, extra: Mapping[str, str], delivery_timeout: float
) -> dict[str, Any]:
    """Build the librdkafka settings of an idempotent producer.

    Keys in ``extra`` (HIN_KAFKA_CONFIG) override the defaults unchanged.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        # Idempotence with acks=all: the broker stores each record once per
        # producer session and in produce order within a partition.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(delivery_timeout * 1000),
        # The same key-to-partition mapping as the Java client, so records of
        # one key land on one partition whichever client wrote them.
        "partitioner": "murmur2_random",
        # A topic created by a produce request gets the broker's default
        # partition count; topics are created explicitly instead.
        "allow.auto.create.topics": False,
        "logger": KAFKA_LOGGER,
    }
    config.update(extra)
    return config


class OutboxRelay:
    """Publish pending outbox rows in commit order and mark them sent.

    A row counts as sent only after its delivery report succeeded, so a crash
    at any point leads to a re-send, never to a loss. Consumers skip what they
    already applied. The relay runs on its own thread: start, flush with a
    deadline, stop with a deadline.
    """

    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        producer_config: Mapping[str, Any],
        tracer_provider: trace.TracerProvider,
        options: RelayOptions = RelayOptions(),
        ensure_topics: Callable[[], None] | None = None,
        producer_factory: ProducerFactory = Producer,
        after_delivery: DeliveryHook | None = None,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._producer_config = dict(producer_config)
        self._tracer = tracer_provider.get_tracer("mesh.runtime.events.relay")
        self._options = options
        self._ensure_topics = ensure_topics
        self._producer_factory = producer_factory
        self._after_delivery = after_delivery
        self._producer: Producer | None = None
        self._fatal_error: KafkaError | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._failed_batches = 0
        self._publisher_lock = PublisherLock(db)
        self._next_prune = 0.0

    def start(self) -> None:
        """Start the relay thread and publish whatever is pending."""
        if self._thread is not None:
            return
        self._outbox.subscribe(self.wake)
        self._thread = threading.Thread(
            target=self._run, name=f"outbox-relay-{self._outbox.service}", daemon=True
        )
        self._thread.start()
        logger.info("outbox relay started", extra={"source": self._outbox.source})

    def wake(self) -> None:
        """Publish soon; called after a commit that added outbox rows."""
        with self._idle_lock:
            self._idle.clear()
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending; return False when ``timeout`` passed."""
        if self._thread is None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.publish_pending() == 0 and self.pending_count() == 0:
                    return True
            return False
        self.wake()
        return self._idle.wait(timeout)

    def stop(self, timeout: float) -> None:
        """Publish what is pending, then stop; all within ``timeout`` seconds."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._stopping.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._outbox.unsubscribe(self.wake)
        self._close_producer(timeout=max(0.0, deadline - time.monotonic()))
        self._publisher_lock.release()
        self._thread = None
        logger.info(
            "outbox relay stopped",
            extra={"flushed": flushed, "pending": self._safe_pending_count()},
        )

    def pending_count(self) -> int:
        """Return the number of rows not yet confirmed by the broker."""
        with self._db.transaction() as session:
            count = session.connection().scalar(
                select(func.count())
                .select_from(outbox_table)
                .where(outbox_table.c.sent_at.is_(None))
            )
            return int(count or 0)

    def publish_pending(self) -> int:
        """Publish pending rows batch by batch; return how many were confirmed.

        Stops at the first batch with a failure, so the next pass starts again
        at the oldest unconfirmed row.
        """
        # NOTE: when the broker fails one record of a batch but confirms a
        # later record of the same key, the re-send puts the earlier event
        # after the later one. The idempotent producer makes this rare, but it
        # does not rule it out for records that time out.
        total = 0
        while not self._stopping.is_set():
            rows = self._load_pending()
            if not rows:
                return total
            confirmed, complete = self._publish_batch(rows)
            total += confirmed
            if not complete:
                return total
        return total

    def republish(self, *, since: datetime | None, until: datetime | None) -> int:
        """Publish again every row created in [since, until), sent or not.

        This is the recovery path after the broker lost records. Consumers
        skip the events they already applied. Returns the number of rows
        confirmed.

        Raises:
            RelayError: the broker did not confirm every row.
        """
        total = 0
        after = 0
        while True:
            rows = self._load_range(since=since, until=until, after=after)
            if not rows:
                return total
            confirmed, complete = self._publish_batch(rows)
            total += confirmed
            if not complete:
                raise RelayError(
                    f"the broker confirmed {total} rows and failed the batch after "
                    f"outbox seq {after}; run the replay again when it is reachable"
                )
            after = rows[-1].seq

    def _load_range(
        self, *, since: datetime | None, until: datetime | None, after: int
    ) -> list[Row[Any]]:
        query = select(outbox_table).where(outbox_table.c.seq > after)
        if since is not None:
            query = query.where(outbox_table.c.created_at >= _as_utc(since))
        if until is not None:
            query = query.where(outbox_table.c.created_at < _as_utc(until))
        query = query.order_by(outbox_table.c.seq).limit(self._options.batch_size)
        with self._db.transaction() as session:
            return list(session.connection().execute(query).all())

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if self._publisher_lock.acquire():
                    self.publish_pending()
                    self._prune_if_due()
                    pending = self.pending_count()
                else:
                    # Another replica's relay publishes, so this one waits.
                    pending = 0
            except Exception:
                logger.exception("outbox relay pass failed; retrying")
                pending = -1
            if pending == 0:
                self._failures = 0
                with self._idle_lock:
                    # A commit that woke the relay during this pass may have
                    # added rows after they were counted.
                    if not self._wake.is_set():
                        self._idle.set()
                self._wake.wait(self._options.poll_interval)
            else:
                # Something is still pending after a full pass, so the broker
                # or the database failed: back off, but wake on new commits.
                self._failures += 1
                backoff = min(0.1 * 2 ** min(self._failures, 6), 5.0)
                self._wake.wait(min(backoff, self._options.poll_interval * 5))

    def _load_pending(self) -> list[Row[Any]]:
        with self._db.transaction() as session:
            result = session.connection().execute(
                select(outbox_table)
                .where(outbox_table.c.sent_at.is_(None))
                .order_by(outbox_table.c.seq)
                .limit(self._options.batch_size)
            )
            return list(result.all())

    def _publish_batch(self, rows: Sequence[Row[Any]]) -> tuple[int, bool]:
        """Produce ``rows``, wait for their reports, mark the confirmed ones."""
        producer = self._current_producer()
        reports: dict[int, KafkaError | None] = {}

        # Produce every row, each under its own producer span whose parent is
        # the span that wrote the row.
        produced_all = True
        try:
            for row in rows:
                self._produce(producer, row, reports)
        except KafkaException as exc:
            produced_all = False
            logger.warning(
                "producing outbox rows failed", extra={"error": str(exc.args[0])}
            )

        # Wait for the delivery reports. A producer that reports nothing
        # within the deadline is stalled (the embedded broker does that after
        # a restart), and so is one with a fatal error such as
        # UNKNOWN_PRODUCER_ID; both are replaced and the rows re-sent.
        deadline = time.monotonic() + self._options.delivery_timeout + 2.0
        while produced_all and len(reports) < len(rows) and not self._fatal_error:
            if time.monotonic() > deadline:
                break
            try:
                producer.poll(0.05)
            except KafkaException as exc:
                # A fatal error raised from poll() ends this producer as well.
                self._fatal_error = exc.args[0]
        if not produced_all:
            self._replace_producer(reason="produce failed")
        elif self._fatal_error is not None:
            self._replace_producer(reason=f"fatal error {self._fatal_error.name()}")
        elif len(reports) < len(rows):
            self._replace_producer(reason="no delivery reports before the deadline")

        confirmed = [seq for seq, error in reports.items() if error is None]
        failed = {seq: error for seq, error in reports.items() if error is not None}
        if confirmed and self._after_delivery is not None:
            self._after_delivery(confirmed)
        self._mark(confirmed, failed)
        complete = len(confirmed) == len(rows)
        if complete:
            self._failed_batches = 0
            return len(confirmed), complete

        self._failed_batches += 1
        errors = sorted({error.name() for error in failed.values()})
        logger.warning(
            "outbox rows not confirmed; they will be re-sent",
            extra={
                "confirmed": len(confirmed),
                "failed": len(failed),
                "unreported": len(rows) - len(reports),
                "errors": errors,
                "failed_batches": self._failed_batches,
            },
        )
        # A producer whose records keep failing does not recover by itself.
        # This happens when records timed out while the broker was down and
        # the producer then stays on its old producer id. A new producer
        # starts a new idempotence session.
        if (
            self._producer is producer
            and self._failed_batches >= REPLACE_AFTER_FAILURES
        ):
            self._replace_producer(reason=f"{self._failed_batches} failed batches")
            self._failed_batches = 0
        self._create_missing_topics()
        return len(confirmed), complete

    def _produce(
        self, producer: Producer, row: Row[Any], reports: dict[int, KafkaError | None]
    ) -> None:
        parent = _propagator.extract(
            {"traceparent": row.traceparent, "tracestate": row.tracestate}
        )
        span = self._tracer.start_span(
            f"{row.topic} publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": row.topic,
                "messaging.message.id": row.event_id,
                "cloudevents.event_type": row.event_type,
            },
        )
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span, parent))
        headers = cloudevents_headers(
            event_id=row.event_id,
            source=row.source,
            event_type=row.event_type,
            time=_as_utc(row.created_at),
            subject=row.subject,
            traceparent=carrier.get("traceparent", ""),
            tracestate=carrier.get("tracestate", ""),
        )

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            reports[row.seq] = error
            if error is None:
                span.set_attribute(
                    "messaging.kafka.destination.partition", message.partition() or 0
                )
                span.set_attribute("messaging.kafka.offset", message.offset() or 0)
            else:
                span.set_status(Status(StatusCode.ERROR, error.name()))
            span.end()

        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            self._produce_one(producer, row, headers, on_delivery)
        except BaseException:
            span.end()
            raise
        finally:
            otel_context.detach(token)

    def _produce_one(
        self,
        producer: Producer,
        row: Row[Any],
        headers: list[tuple[str, HeaderValue]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                producer.produce(
                    row.topic,
                    value=row.payload,
                    key=row.key.encode(),
                    headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports to drain it.
                producer.poll(0.1)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                # Resending can never succeed, and every later row waits
                # behind this one, so its place in the topic goes to a notice.
                self._dead_letter_oversized(producer, row, headers, on_delivery)
                return

    def _dead_letter_oversized(
        self,
        producer: Producer,
        row: Row[Any],
        headers: list[tuple[str, HeaderValue]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        """Send a payload-less notice of an oversized event to ``<topic>.dlq``.

        The event itself stays in the outbox row (``seq``), from which it can be
        recovered once the producer's ``message.max.bytes`` allows it. The row
        is then marked sent, so the events behind it flow again.
        """
        message = (
            f"event of {len(row.payload)} bytes exceeds the producer's "
            f"message.max.bytes; it stays in outbox row {row.seq}"
        )
        notice = [
            *headers,
            (env.DLQ_ERROR_TYPE, b"MSG_SIZE_TOO_LARGE"),
            (env.DLQ_ERROR_MESSAGE, message.encode()),
            (env.DLQ_ATTEMPTS, b"1"),
            (env.DLQ_ORIGINAL_TOPIC, row.topic.encode()),
            (env.DLQ_ORIGINAL_PARTITION, b"-1"),
            (env.DLQ_ORIGINAL_OFFSET, b"-1"),
            (env.DLQ_CONSUMER_GROUP, b""),
            (env.DLQ_FAILED_AT, env.format_time(datetime.now(UTC)).encode()),
        ]
        logger.error(
            "outbox event too large to publish; notice sent to the dead-letter topic",
            extra={
                "event_id": row.event_id,
                "outbox_seq": row.seq,
                "payload_bytes": len(row.payload),
            },
        )
        producer.produce(
            env.dlq_topic(row.topic),
            value=b"",
            key=row.key.encode(),
            headers=notice,
            on_delivery=on_delivery,
        )

    def _mark(self, confirmed: Sequence[int], failed: Mapping[int, KafkaError]) -> None:
        now = datetime.now(UTC)
        with self._db.transaction() as session:
            connection = session.connection()
            if confirmed:
                connection.execute(
                    update(outbox_table)
                    .where(outbox_table.c.seq.in_(confirmed))
                    .where(outbox_table.c.sent_at.is_(None))
                    .values(sent_at=now, send_attempts=outbox_table.c.send_attempts + 1)
                )
            for seq, error in failed.items():
                connection.execute(
                    update(outbox_table)
                    .where(outbox_table.c.seq == seq)
                    .values(
                        send_attempts=outbox_table.c.send_attempts + 1,
                        last_error=f"{error.name()}: {error.str()}"[:1000],
                    )
                )

    def _current_producer(self) -> Producer:
        if self._producer is None:
            config = dict(self._producer_config)
            config["error_cb"] = self._on_error
            self._fatal_error = None
            self._producer = self._producer_factory(config)
        return self._producer

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal_error = error
            logger.warning("producer fatal error", extra={"error": error.name()})
        else:
            logger.debug("producer error", extra={"error": error.name()})

    def _replace_producer(self, *, reason: str) -> None:
        logger.warning("replacing the outbox producer", extra={"reason": reason})
        self._close_producer(timeout=0.0)

    def _create_missing_topics(self) -> None:
        # A broker that lost its data lost the topics too. The producer does
        # not create topics (allow.auto.create.topics is false), so the
        # re-send waits until they exist with their partition count.
        if self._ensure_topics is None:
            return
        try:
            self._ensure_topics()
        except Exception as exc:
            logger.warning("creating topics failed", extra={"error": str(exc)})

    def _close_producer(self, *, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if timeout > 0:
            producer.flush(timeout)
        # Purging fails what is still queued, so destroying the producer does
        # not wait for a broker that never responds.
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.poll(0)

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self._options.prune_interval
        prune(
            self._db,
            outbox_retention=self._options.outbox_retention,
            inbox_retention=self._options.inbox_retention,
        )

    def _safe_pending_count(self) -> int:
        try:
            return self.pending_count()
        except Exception:
            return -1


class PublisherLock:
    """Let one relay per PostgreSQL database publish; the others stand by.

    Replicas of a service share its database. Two relays publishing the same
    rows would send duplicates and could interleave one key's events, so each
    relay holds a session-level advisory lock on a connection of its own
    while it publishes. A lost connection releases the lock, and another
    replica takes over. SQLite needs no lock because its file is used by one
    process.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: Connection | None = None
        self._held = False

    def acquire(self) -> bool:
        """Return True when this relay holds the lock, taking it if free."""
        if self._db.is_sqlite:
            return True
        try:
            if self._connection is None:
                self._connection = self._db.engine.connect()
            if self._held:
                # The lock lives as long as the session; check that it does.
                self._connection.execute(text("SELECT 1"))
            else:
                self._held = bool(
                    self._connection.execute(
                        text("SELECT pg_try_advisory_lock(:key)"),
                        {"key": PUBLISHER_LOCK_KEY},
                    ).scalar()
                )
                if self._held:
                    logger.info("outbox relay took the publisher lock")
            self._connection.commit()
        except SQLAlchemyError as exc:
            logger.warning(
                "publisher lock connection failed", extra={"error": type(exc).__name__}
            )
            self.release()
        return self._held

    def release(self) -> None:
        """Release the lock by closing its connection."""
        connection, self._connection = self._connection, None
        self._held = False
        if connection is None:
            return
        # Invalidating closes the database session instead of returning it to
        # the pool, where it would keep the lock.
        connection.invalidate()
        connection.close()


def prune(
    db: Database,
    *,
    outbox_retention: timedelta | None,
    inbox_retention: timedelta | None,
) -> tuple[int, int]:
    """Delete sent outbox rows and inbox rows past their retention.

    Returns the number of outbox and inbox rows deleted. Pending outbox rows
    are never deleted.
    """
    now = datetime.now(UTC)
    outbox_deleted = inbox_deleted = 0
    with db.transaction() as session:
        connection = session.connection()
        if outbox_retention is not None:
            outbox_deleted = connection.execute(
                delete(outbox_table)
                .where(outbox_table.c.sent_at.is_not(None))
                .where(outbox_table.c.sent_at < now - outbox_retention)
            ).rowcount
        if inbox_retention is not None:
            inbox_deleted = connection.execute(
                delete(inbox_table).where(
                    inbox_table.c.applied_at < now - inbox_retention
                )
            ).rowcount
    if outbox_deleted or inbox_deleted:
        logger.info(
            "pruned event tables",
            extra={"outbox_rows": outbox_deleted, "inbox_rows": inbox_deleted},
        )
    return outbox_deleted, inbox_deleted


def _as_utc(moment: datetime) -> datetime:
    # The outbox stores UTC, and SQLite returns it as naive datetimes.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
