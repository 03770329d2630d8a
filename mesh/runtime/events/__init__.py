"""Event bus: transactional outbox, relay, idempotent consumer, dead letters.

A service writes events with ``Outbox.add`` in the transaction of its state
change, and ``OutboxRelay`` publishes them. ``Handler`` functions run in the
consumer, each in one transaction with its inbox row. ``EventBus`` starts and
stops these pieces for ``mesh.runtime.server.ServiceHost``.
"""

from mesh.runtime.events.bus import EventBus, all_event_topics, ensure_topics
from mesh.runtime.events.consumer import (
    ConsumerOptions,
    EventConsumer,
    Handler,
    InvalidEvent,
    apply_event,
    consumer_config,
)
from mesh.runtime.events.envelope import (
    Envelope,
    context_topics,
    dlq_topic,
    topic_for_event,
)
from mesh.runtime.events.outbox import Outbox
from mesh.runtime.events.relay import OutboxRelay, RelayOptions, producer_config, prune
from mesh.runtime.events.tables import add_event_tables, inbox_table, outbox_table

__all__ = [
    "ConsumerOptions",
    "Envelope",
    "EventBus",
    "EventConsumer",
    "Handler",
    "InvalidEvent",
    "Outbox",
    "OutboxRelay",
    "RelayOptions",
    "add_event_tables",
    "apply_event",
    "all_event_topics",
    "consumer_config",
    "context_topics",
    "dlq_topic",
    "ensure_topics",
    "inbox_table",
    "outbox_table",
    "producer_config",
    "prune",
    "topic_for_event",
]
