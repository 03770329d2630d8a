"""Read dead-lettered records and send them back to their original topic."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage

from mesh.runtime.events import envelope as env
from mesh.runtime.events.kafka_log import KAFKA_LOGGER
from mesh.runtime.events.relay import producer_config

logger = logging.getLogger(__name__)

#: Consumer group whose committed offsets on each ``.dlq`` topic mark how far
#: dead letters were sent back; list shows later records as not replayed.
REPLAY_GROUP = "hin.dlq-replay"
#: A read ends when the reported end of every partition was reached and no
#: record arrived for this many seconds. The embedded broker reports the end
#: of a partition too low when its last batch held several records, so the
#: reported end alone can stop a read early.
IDLE_SECONDS = 1.0


class DeadLetterError(RuntimeError):
    """Dead letters could not be read or sent back."""


@dataclass(frozen=True)
class DeadLetter:
    """One record in a ``.dlq`` topic and the error that put it there."""

    topic: str
    partition: int
    offset: int
    key: str
    event_id: str
    event_type: str
    original_topic: str
    original_partition: int
    original_offset: int
    consumer_group: str
    error_type: str
    error_message: str
    attempts: int
    failed_at: str
    #: Whether ``hin dlq replay`` already sent it back.
    replayed: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)


def read_dead_letters(
    *, bootstrap: str, topic: str = "", extra: Mapping[str, str] | None = None
) -> list[DeadLetter]:
    """Return the dead letters of every ``.dlq`` topic, or of ``topic``'s.

    ``topic`` may name an event topic or its ``.dlq`` topic.
    """
    letters, _ = _read(bootstrap=bootstrap, topic=topic, extra=extra or {})
    return [letter for letter, _message in letters]


def replay_dead_letters(
    *, bootstrap: str, topic: str = "", extra: Mapping[str, str] | None = None
) -> int:
    """Send not yet replayed dead letters back to their original topic.

    The original headers go with each record, without the error headers. The
    replay group's offsets are committed only after the broker confirmed
    every record, so a failed replay is repeated in full next time. The
    consumers' inbox skips events applied in between. Returns the number of
    records sent.

    Raises:
        DeadLetterError: the broker did not confirm every record.
    """
    extra = dict(extra or {})
    letters, consumer = _read(
        bootstrap=bootstrap, topic=topic, extra=extra, keep_consumer=True
    )
    assert consumer is not None
    try:
        pending = [(letter, msg) for letter, msg in letters if not letter.replayed]
        if not pending:
            return 0
        _send_back(bootstrap=bootstrap, extra=extra, pending=pending)

        # Mark how far the replay went, per partition, one past the last record.
        marks: dict[tuple[str, int], int] = {}
        for letter, _message in pending:
            key = (letter.topic, letter.partition)
            marks[key] = max(marks.get(key, 0), letter.offset + 1)
        consumer.commit(
            offsets=[
                TopicPartition(name, partition, offset)
                for (name, partition), offset in marks.items()
            ],
            asynchronous=False,
        )
        logger.info("dead letters replayed", extra={"count": len(pending)})
        return len(pending)
    finally:
        consumer.close()


def _send_back(
    *,
    bootstrap: str,
    extra: Mapping[str, str],
    pending: Sequence[tuple[DeadLetter, KafkaMessage]],
) -> None:
    producer = Producer(
        producer_config(
            bootstrap=bootstrap,
            client_id="hin.dlq-replay",
            extra=extra,
            delivery_timeout=30.0,
        )
    )
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: KafkaMessage) -> None:
        if error is not None:
            errors.append(error)

    for letter, message in pending:
        headers = [
            (name, value)
            for name, value in env.header_items(message.headers())
            if name not in env.DLQ_HEADERS
        ]
        producer.produce(
            letter.original_topic,
            value=message.value(),
            key=message.key(),
            headers=headers,
            on_delivery=on_delivery,
        )
    remaining = producer.flush(35.0)
    if remaining or errors:
        detail = errors[0].str() if errors else f"{remaining} records unconfirmed"
        raise DeadLetterError(
            f"replaying dead letters failed: {detail}; nothing was marked "
            "replayed, so run hin dlq replay again when the broker is reachable"
        )


def _read(
    *,
    bootstrap: str,
    topic: str,
    extra: Mapping[str, str],
    keep_consumer: bool = False,
) -> tuple[list[tuple[DeadLetter, KafkaMessage]], Consumer | None]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": REPLAY_GROUP,
            "client.id": f"hin.dlq.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "logger": KAFKA_LOGGER,
            **extra,
        }
    )
    try:
        letters = _read_with(consumer, topic)
    except BaseException:
        consumer.close()
        raise
    if keep_consumer:
        return letters, consumer
    consumer.close()
    return letters, None


def _read_with(consumer: Consumer, topic: str) -> list[tuple[DeadLetter, KafkaMessage]]:
    try:
        metadata = consumer.list_topics(timeout=10)
    except KafkaException as exc:
        raise DeadLetterError(f"broker metadata request failed: {exc.args[0]}") from exc
    wanted = _dlq_topics(metadata.topics, topic)
    partitions = [
        TopicPartition(name, partition)
        for name in wanted
        for partition in sorted(metadata.topics[name].partitions)
    ]
    if not partitions:
        return []

    # Where the replay group stopped, and where each partition ends now.
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in consumer.committed(partitions, timeout=10)
    }
    ends = {}
    for tp in partitions:
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        if high > low:
            ends[(tp.topic, tp.partition)] = high
    if not ends:
        return []
    consumer.assign(
        [TopicPartition(name, part, OFFSET_BEGINNING) for name, part in ends]
    )

    letters: list[tuple[DeadLetter, KafkaMessage]] = []
    positions: dict[tuple[str, int], int] = {}
    last_record = time.monotonic()
    while True:
        message = consumer.poll(0.1)
        now = time.monotonic()
        if message is None or message.error() is not None:
            reached = all(
                positions.get(key, -1) + 1 >= end for key, end in ends.items()
            )
            if reached and now - last_record >= IDLE_SECONDS:
                break
            continue
        last_record = now
        key = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        positions[key] = offset
        # A negative committed offset means the group never replayed there.
        mark = committed.get(key, -1)
        replayed = 0 <= mark and offset < mark
        letters.append((_letter(message, replayed=replayed), message))
    return letters


def _dlq_topics(existing: Mapping[str, Any], topic: str) -> list[str]:
    if topic:
        name = topic if topic.endswith(env.DLQ_SUFFIX) else env.dlq_topic(topic)
        return [name] if name in existing else []
    return sorted(name for name in existing if name.endswith(env.DLQ_SUFFIX))


def _letter(message: KafkaMessage, *, replayed: bool) -> DeadLetter:
    headers = env.decode_headers(message.headers())
    key = message.key() or b""
    return DeadLetter(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key,
        event_id=headers.get("ce_id", ""),
        event_type=headers.get("ce_type", ""),
        original_topic=headers.get(env.DLQ_ORIGINAL_TOPIC, ""),
        original_partition=_int(headers.get(env.DLQ_ORIGINAL_PARTITION, "")),
        original_offset=_int(headers.get(env.DLQ_ORIGINAL_OFFSET, "")),
        consumer_group=headers.get(env.DLQ_CONSUMER_GROUP, ""),
        error_type=headers.get(env.DLQ_ERROR_TYPE, ""),
        error_message=headers.get(env.DLQ_ERROR_MESSAGE, ""),
        attempts=_int(headers.get(env.DLQ_ATTEMPTS, "")),
        failed_at=headers.get(env.DLQ_FAILED_AT, ""),
        replayed=replayed,
    )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1
