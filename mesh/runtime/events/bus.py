"""Event bus of one service process: topics, outbox relay and consumer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import inspect

from mesh.runtime.events.consumer import (
    ConsumerOptions,
    EventConsumer,
    Handler,
    consumer_config,
)
from mesh.runtime.events.envelope import context_topics, dlq_topic
from mesh.runtime.events.kafka_log import KAFKA_LOGGER
from mesh.runtime.events.outbox import Outbox
from mesh.runtime.events.relay import OutboxRelay, RelayOptions, producer_config
from mesh.runtime.events.tables import inbox_table, outbox_table
from mesh.runtime.settings import ServiceSettings, SettingsError
from mesh.runtime.storage import Database

logger = logging.getLogger(__name__)

#: Partitions of each topic the bus creates. Keys spread over them; one key
#: always maps to one partition, which keeps a patient's events in order.
DEFAULT_PARTITIONS = 3
#: Time a topic creation request gets, in seconds.
TOPIC_TIMEOUT_SECONDS = 10.0


def ensure_topics(
    *,
    bootstrap: str,
    topics: Iterable[str],
    partitions: int = DEFAULT_PARTITIONS,
    extra: Mapping[str, str] | None = None,
    timeout: float = TOPIC_TIMEOUT_SECONDS,
) -> list[str]:
    """Create the missing ``topics`` with ``partitions`` each; return the created.

    Topics are created explicitly because a topic that a producer creates
    implicitly gets the broker's default partition count.

    Raises:
        KafkaException: the broker rejected a request or did not respond.
    """
    names = sorted(set(topics))
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, **_admin_settings(extra or {})},
        logger=KAFKA_LOGGER,
    )
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [name for name in names if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name in missing
        ],
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    if created:
        logger.info(
            "topics created", extra={"topics": created, "partitions": partitions}
        )
    return created


def all_event_topics(extra: Iterable[str] = ()) -> list[str]:
    """Return the six context topics, the given ones, and the DLQ of each."""
    topics = sorted({*context_topics(), *extra})
    return topics + [dlq_topic(topic) for topic in topics]


class EventBus:
    """Outbox, relay and consumer of one service, started and stopped together."""

    def __init__(
        self,
        *,
        service: str,
        settings: ServiceSettings,
        db: Database,
        tracer_provider: TracerProvider,
    ) -> None:
        self.service = service
        self._settings = settings
        self._db = db
        self._tracer_provider = tracer_provider
        self.outbox = Outbox(service=service)
        self.relay_options = relay_options_from(settings)
        self.consumer_options = consumer_options_from(settings)
        self.partitions = _int_setting(settings, "topic_partitions", DEFAULT_PARTITIONS)
        self.relay: OutboxRelay | None = None
        self.consumer: EventConsumer | None = None
        self._topics: list[str] = []

    @property
    def group_id(self) -> str:
        """Consumer group of this service, ``hin.<service>``."""
        return f"hin.{self.service}"

    async def start(
        self, *, handlers: Sequence[Handler[Any]], topics: Sequence[str] = ()
    ) -> None:
        """Create the topics, start the relay, and the consumer if any handler.

        ``topics`` default to the topics of the handlers' event types.
        """
        subscribed = sorted(set(topics) or {handler.topic for handler in handlers})
        self._topics = all_event_topics(subscribed)
        await asyncio.to_thread(self._ensure_topics_logged)
        has_outbox, has_inbox = await asyncio.to_thread(self._event_tables)

        producer_settings = producer_config(
            bootstrap=self._settings.kafka_bootstrap,
            client_id=f"hin.{self.service}.{self._settings.instance_id}",
            extra=self._settings.kafka_config,
            delivery_timeout=self.relay_options.delivery_timeout,
        )
        if has_outbox:
            self.relay = OutboxRelay(
                db=self._db,
                outbox=self.outbox,
                producer_config=producer_settings,
                tracer_provider=self._tracer_provider,
                options=self.relay_options,
                ensure_topics=self._ensure_topics_logged,
            )
            self.relay.start()
        else:
            logger.info("no outbox table in the schema; the relay is not started")

        if not handlers:
            return
        if not has_inbox:
            raise RuntimeError(
                f"service {self.service} has event handlers but no {inbox_table.name} "
                "table; call mesh.runtime.events.add_event_tables(metadata) and "
                "add the tables to its migration"
            )
        self.consumer = EventConsumer(
            service=self.service,
            db=self._db,
            handlers=handlers,
            topics=subscribed,
            consumer_config=consumer_config(
                bootstrap=self._settings.kafka_bootstrap,
                group_id=self.group_id,
                client_id=f"hin.{self.service}.{self._settings.instance_id}",
                extra=self._settings.kafka_config,
            ),
            producer_config=producer_settings,
            tracer_provider=self._tracer_provider,
            options=self.consumer_options,
            ensure_topics=self._ensure_topics_logged,
        )
        self.consumer.start()

    async def stop(self, *, timeout: float) -> None:  # noqa: ASYNC109
        """Stop the consumer, then flush and stop the relay, within ``timeout``.

        The relay gets at least one second even when the consumer used up the
        timeout, so that events its last handler wrote can still be sent.
        """
        deadline = time.monotonic() + timeout
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.stop, timeout)
            self.consumer = None
        if self.relay is not None:
            remaining = max(1.0, deadline - time.monotonic())
            await asyncio.to_thread(self.relay.stop, remaining)
            self.relay = None

    def _ensure_topics_logged(self) -> None:
        # Writes go to the outbox while the broker is down, so a broker that
        # cannot be reached delays publishing but does not stop the service.
        try:
            ensure_topics(
                bootstrap=self._settings.kafka_bootstrap,
                topics=self._topics,
                partitions=self.partitions,
                extra=self._settings.kafka_config,
            )
        except KafkaException as exc:
            logger.warning(
                "creating topics failed; the relay retries when it reconnects",
                extra={"error": str(exc.args[0])},
            )

    def _event_tables(self) -> tuple[bool, bool]:
        inspector = inspect(self._db.engine)
        return (
            inspector.has_table(outbox_table.name),
            inspector.has_table(inbox_table.name),
        )


def relay_options_from(settings: ServiceSettings) -> RelayOptions:
    """Read the relay's HIN_<SERVICE>_... settings; see docs/platform.md."""
    return RelayOptions(
        poll_interval=_float_setting(settings, "relay_poll_seconds", 1.0),
        delivery_timeout=_float_setting(
            settings, "relay_delivery_timeout_seconds", 10.0
        ),
        outbox_retention=_days_setting(settings, "outbox_retention_days", 30),
        inbox_retention=_days_setting(settings, "inbox_retention_days", 90),
    )


def consumer_options_from(settings: ServiceSettings) -> ConsumerOptions:
    """Read the consumer's HIN_<SERVICE>_... settings; see docs/platform.md."""
    return ConsumerOptions(
        max_attempts=_int_setting(settings, "event_max_attempts", 5),
        backoff_initial=_float_setting(settings, "event_backoff_seconds", 0.1),
        backoff_max=_float_setting(settings, "event_backoff_max_seconds", 5.0),
    )


def _admin_settings(extra: Mapping[str, str]) -> dict[str, str]:
    # Security and client settings apply to the admin client as well; consumer
    # and producer settings would only produce librdkafka warnings.
    prefixes = ("security.", "ssl.", "sasl.", "client.", "socket.")
    return {key: value for key, value in extra.items() if key.startswith(prefixes)}


def _variable(settings: ServiceSettings, key: str) -> str:
    return f"HIN_{settings.name.upper()}_{key.upper()}"


def _float_setting(settings: ServiceSettings, key: str, default: float) -> float:
    text = settings.service_setting(key, str(default))
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(
            f"{_variable(settings, key)}={text!r} is not a number"
        ) from None
    if value <= 0:
        raise SettingsError(f"{_variable(settings, key)}={text!r} must be positive")
    return value


def _int_setting(settings: ServiceSettings, key: str, default: int) -> int:
    text = settings.service_setting(key, str(default))
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(
            f"{_variable(settings, key)}={text!r} is not a whole number"
        ) from None
    if value <= 0:
        raise SettingsError(f"{_variable(settings, key)}={text!r} must be positive")
    return value


def _days_setting(
    settings: ServiceSettings, key: str, default: int
) -> timedelta | None:
    text = settings.service_setting(key, str(default))
    try:
        days = int(text)
    except ValueError:
        raise SettingsError(
            f"{_variable(settings, key)}={text!r} is not a whole number of days"
        ) from None
    if days < 0:
        raise SettingsError(f"{_variable(settings, key)}={text!r} must not be negative")
    return None if days == 0 else timedelta(days=days)
