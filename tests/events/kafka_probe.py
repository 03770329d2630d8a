"""Read a topic straight from the broker, apart from the code under test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, str]


def read_topic(
    bootstrap: str, topic: str, *, idle_seconds: float = 1.5
) -> list[Record]:
    """Return every record of ``topic``, reading until none came for a while."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for partition in partitions
            ]
        )
        records = []
        last = time.monotonic()
        while time.monotonic() - last < idle_seconds:
            message = consumer.poll(0.1)
            if message is None or message.error() is not None:
                continue
            last = time.monotonic()
            records.append(
                Record(
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    key=(message.key() or b"").decode(),
                    value=message.value() or b"",
                    headers={
                        name: (value or b"").decode()
                        for name, value in message.headers() or []
                    },
                )
            )
        return records
    finally:
        consumer.close()


def wait_until(
    condition: Callable[[], bool], *, timeout: float = 60.0, description: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {description}"
            )
        time.sleep(0.05)
