"""Outbox and inbox tables, added to each service's own metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

#: Canonical definitions. Statements are built against these tables, and a
#: service's metadata gets copies with the same names and columns. The SQL is
#: therefore identical whichever copy created the schema.
_metadata = MetaData()

#: Column lengths that callers' values must fit; PostgreSQL enforces them.
EVENT_ID_LENGTH = 36
KEY_LENGTH = 255
SUBJECT_LENGTH = 255

# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
_sequence_type = BigInteger().with_variant(Integer(), "sqlite")

outbox_table = Table(
    "hin_outbox",
    _metadata,
    # Allocation order of the rows; the relay publishes in this order.
    Column("seq", _sequence_type, primary_key=True, autoincrement=True),
    Column("event_id", String(EVENT_ID_LENGTH), nullable=False, unique=True),
    Column("topic", String(249), nullable=False),
    Column("key", String(KEY_LENGTH), nullable=False),
    Column("event_type", String(255), nullable=False),
    Column("source", String(255), nullable=False),
    Column("subject", String(SUBJECT_LENGTH), nullable=False, default=""),
    Column("payload", LargeBinary, nullable=False),
    # W3C trace context of the span that wrote the row.
    Column("traceparent", String(55), nullable=False, default=""),
    Column("tracestate", String(512), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Set only after the broker confirmed the record; NULL means pending.
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("send_attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Index("ix_hin_outbox_pending", "sent_at", "seq"),
    Index("ix_hin_outbox_created_at", "created_at"),
)

inbox_table = Table(
    "hin_inbox",
    _metadata,
    # One row per (consumer group, event id): the event was applied by that
    # group, in the same transaction as its effect.
    Column("consumer_group", String(255), primary_key=True),
    Column("event_id", String(EVENT_ID_LENGTH), primary_key=True),
    Column("event_type", String(255), nullable=False),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    Index("ix_hin_inbox_applied_at", "applied_at"),
)


def add_event_tables(metadata: MetaData) -> None:
    """Add the outbox and inbox tables to ``metadata``; a second call does nothing.

    The service's Alembic migration then creates them with its own tables.
    """
    for table in (outbox_table, inbox_table):
        if table.name not in metadata.tables:
            table.to_metadata(metadata)
