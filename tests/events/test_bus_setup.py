"""EventBus start-up checks and its HIN_<CONTEXT>_... settings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from bus_sample import HANDLER
from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData

from mesh.runtime.events import EventBus, add_event_tables
from mesh.runtime.settings import ServiceSettings, SettingsError
from mesh.runtime.storage import Database

ALL_TOPICS = {
    f"hin.{context}.events.v1{suffix}"
    for context in ("records", "appointments", "labs", "billing", "authz", "notify")
    for suffix in ("", ".dlq")
}


def settings_for(bootstrap: str, **extra: str) -> ServiceSettings:
    return ServiceSettings.from_env(
        "records", environ={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **extra}
    )


def bus_for(db: Database, settings: ServiceSettings) -> EventBus:
    return EventBus(
        service="records", settings=settings, db=db, tracer_provider=TracerProvider()
    )


def test_defaults_without_settings() -> None:
    bus = bus_for(Database("sqlite://"), settings_for("127.0.0.1:1"))
    assert bus.consumer_options.max_attempts == 5
    assert bus.relay_options.delivery_timeout == 10.0
    assert bus.relay_options.outbox_retention == timedelta(days=30)
    assert bus.partitions == 3
    assert bus.group_id == "hin.records"


def test_settings_read_from_environment() -> None:
    settings = settings_for(
        "127.0.0.1:1",
        HIN_RECORDS_EVENT_MAX_ATTEMPTS="7",
        HIN_RECORDS_RELAY_DELIVERY_TIMEOUT_SECONDS="2.5",
        HIN_RECORDS_OUTBOX_RETENTION_DAYS="0",
        HIN_RECORDS_TOPIC_PARTITIONS="6",
    )
    bus = bus_for(Database("sqlite://"), settings)
    assert bus.consumer_options.max_attempts == 7
    assert bus.relay_options.delivery_timeout == 2.5
    assert bus.relay_options.outbox_retention is None
    assert bus.partitions == 6


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HIN_RECORDS_EVENT_MAX_ATTEMPTS", "many"),
        ("HIN_RECORDS_EVENT_MAX_ATTEMPTS", "0"),
        ("HIN_RECORDS_EVENT_BACKOFF_SECONDS", "-1"),
        ("HIN_RECORDS_INBOX_RETENTION_DAYS", "-3"),
    ],
)
def test_invalid_setting_names_variable(variable: str, value: str) -> None:
    settings = settings_for("127.0.0.1:1", **{variable: value})
    with pytest.raises(SettingsError, match=variable):
        bus_for(Database("sqlite://"), settings)


async def test_start_creates_every_context_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    bus = bus_for(db, settings_for(kafka_bootstrap))
    await bus.start(handlers=[])
    try:
        existing = set(
            AdminClient({"bootstrap.servers": kafka_bootstrap})
            .list_topics(timeout=10)
            .topics
        )
        assert ALL_TOPICS <= existing
        # No outbox table in this schema, so there is no relay to start.
        assert bus.relay is None
        assert bus.consumer is None
    finally:
        await bus.stop(timeout=5)


async def test_handlers_without_inbox_table_rejected(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'outbox-only.db'}")
    metadata = MetaData()
    add_event_tables(metadata)
    metadata.remove(metadata.tables["hin_inbox"])
    db.create_all(metadata)
    bus = bus_for(db, settings_for(kafka_bootstrap))
    try:
        with pytest.raises(RuntimeError, match="add_event_tables"):
            await bus.start(handlers=[HANDLER])
    finally:
        await bus.stop(timeout=5)
