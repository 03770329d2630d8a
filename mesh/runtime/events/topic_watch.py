"""Notice when a subscribed topic was deleted and created again."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import (
    KafkaException,
    TopicCollection,
)
from confluent_kafka.admin import AdminClient

from mesh.runtime.events.kafka_log import KAFKA_LOGGER

logger = logging.getLogger(__name__)

#: Time between two topic id checks, in seconds.
CHECK_INTERVAL_SECONDS = 2.0
#: Time one check may take, in seconds; it runs on the consumer's thread.
CHECK_TIMEOUT_SECONDS = 1.0


class TopicWatch:
    """Report subscribed topics whose topic id changed since the last check.

    A broker with memory storage that restarts comes back without topics,
    records or committed offsets, and the topics are created again with new
    ids. A consumer that stayed connected can stay on an empty assignment or
    on its old fetch position, and then never reads the new records. A
    changed id makes the consumer join its group again.
    """

    def __init__(
        self,
        *,
        topics: Sequence[str],
        admin_config: Mapping[str, Any],
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._topics = list(topics)
        self._admin = AdminClient({**admin_config}, logger=KAFKA_LOGGER)
        self._interval = interval
        self._known: dict[str, str] = {}
        self._next_check = 0.0

    def check(self) -> set[str]:
        """Return the topics re-created since the last check.

        Only one check per interval reaches the broker; other calls return an
        empty set.
        """
        now = time.monotonic()
        if now < self._next_check or not self._topics:
            return set()
        self._next_check = now + self._interval
        return self._recreated_topics()

    def _recreated_topics(self) -> set[str]:
        futures = self._admin.describe_topics(
            TopicCollection(self._topics),
            request_timeout=CHECK_TIMEOUT_SECONDS,
        )
        recreated = set()
        for name, future in futures.items():
            try:
                topic_id = str(future.result(CHECK_TIMEOUT_SECONDS).topic_id)
            except (KafkaException, TimeoutError):
                # The broker is down or the topic is missing right now; the
                # next check compares again.
                continue
            previous = self._known.get(name)
            self._known[name] = topic_id
            if previous is not None and previous != topic_id:
                recreated.add(name)
        return recreated
