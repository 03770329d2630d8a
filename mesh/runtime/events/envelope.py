"""Envelope of a consumed record, topic names and CloudEvents headers."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message

#: The six bounded contexts; each has one event topic and its dead-letter topic.
CONTEXTS = ("records", "appointments", "labs", "billing", "authz", "notify")

DLQ_SUFFIX = ".dlq"
CONTENT_TYPE = "application/protobuf"
SPEC_VERSION = "1.0"

# Headers of a dead-lettered record, added to the original record's headers.
DLQ_ERROR_TYPE = "hin_dlq_error_type"
DLQ_ERROR_MESSAGE = "hin_dlq_error_message"
DLQ_ATTEMPTS = "hin_dlq_attempts"
DLQ_ORIGINAL_TOPIC = "hin_dlq_original_topic"
DLQ_ORIGINAL_PARTITION = "hin_dlq_original_partition"
DLQ_ORIGINAL_OFFSET = "hin_dlq_original_offset"
DLQ_CONSUMER_GROUP = "hin_dlq_consumer_group"
DLQ_FAILED_AT = "hin_dlq_failed_at"
DLQ_HEADERS = (
    DLQ_ERROR_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_ORIGINAL_TOPIC,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_OFFSET,
    DLQ_CONSUMER_GROUP,
    DLQ_FAILED_AT,
)

HeaderValue = str | bytes | None
#: Headers as confluent-kafka returns them: a list of pairs, or a dict.
RawHeaders = Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue]


@dataclass(frozen=True)
class Envelope:
    """CloudEvents attributes and Kafka position of the record being handled."""

    id: str
    source: str
    type: str
    time: datetime | None
    subject: str
    topic: str
    partition: int
    offset: int
    key: str
    headers: Mapping[str, str] = field(default_factory=dict)


#: Envelope of the record whose handler runs in this context. The outbox reads
#: it to fill the causation id of the events that a handler writes.
current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "hin_current_envelope", default=None
)


def topic_for_package(package: str) -> str:
    """Map a protobuf package such as ``hin.records.v1`` to its event topic.

    Raises:
        ValueError: the package is not ``hin.<context>.v<N>``.
    """
    parts = package.split(".")
    if len(parts) != 3 or parts[0] != "hin" or not parts[2].startswith("v"):
        raise ValueError(
            f"protobuf package {package!r} is not of the form hin.<context>.v<N>; "
            "HIN events live in protos/hin/<context>/v1/events.proto"
        )
    return f"hin.{parts[1]}.events.{parts[2]}"


def topic_for_event(event_type: type[Message] | Message) -> str:
    """Return the topic ``hin.<context>.events.v1`` of an event type."""
    return topic_for_package(event_type.DESCRIPTOR.file.package)


def context_topics() -> list[str]:
    """Return the event topics of all six contexts."""
    return [f"hin.{context}.events.v1" for context in CONTEXTS]


def dlq_topic(topic: str) -> str:
    """Return the dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


def format_time(moment: datetime) -> str:
    """Format a time as RFC 3339 in UTC, as CloudEvents' ``time`` attribute."""
    return (
        moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def parse_time(text: str) -> datetime | None:
    """Parse an RFC 3339 time; return None when it is empty or invalid."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def cloudevents_headers(
    *,
    event_id: str,
    source: str,
    event_type: str,
    time: datetime,
    subject: str,
    traceparent: str,
    tracestate: str,
) -> list[tuple[str, HeaderValue]]:
    """Build the binary-mode CloudEvents and W3C trace context headers.

    Only ids go into headers: ``subject`` must be an opaque id, never a name.
    """
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", event_id),
        ("ce_source", source),
        ("ce_type", event_type),
        ("ce_time", format_time(time)),
        ("content-type", CONTENT_TYPE),
    ]
    if subject:
        headers.append(("ce_subject", subject))
    if traceparent:
        headers.append(("traceparent", traceparent))
    if tracestate:
        headers.append(("tracestate", tracestate))
    return [(name, value.encode()) for name, value in headers]


def header_items(raw: RawHeaders | None) -> list[tuple[str, HeaderValue]]:
    """Return Kafka headers as a list of (name, value) pairs."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return list(raw.items())
    return list(raw)


def decode_headers(raw: RawHeaders | None) -> dict[str, str]:
    """Decode Kafka headers to text; the last value of a repeated name wins."""
    decoded: dict[str, str] = {}
    for name, value in header_items(raw):
        if value is None:
            decoded[name] = ""
        elif isinstance(value, bytes):
            decoded[name] = value.decode("utf-8", errors="replace")
        else:
            decoded[name] = value
    return decoded
