"""Route librdkafka's log lines to Python logging, without repeats."""

from __future__ import annotations

import logging
import threading
import time

#: Seconds during which the same librdkafka line is logged once. A client
#: whose broker is down repeats "Connection refused" many times a second.
REPEAT_WINDOW_SECONDS = 30.0


class RepeatFilter(logging.Filter):
    """Drop a log line that equals one let through less than a window ago."""

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS) -> None:
        super().__init__()
        self._window = window
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        now = time.monotonic()
        with self._lock:
            last = self._last_seen.get(text)
            if last is not None and now - last < self._window:
                return False
            if len(self._last_seen) > 1000:
                self._last_seen.clear()
            self._last_seen[text] = now
        return True


#: Logger passed to every producer, consumer and admin client as ``logger``.
KAFKA_LOGGER = logging.getLogger("confluent_kafka")
KAFKA_LOGGER.addFilter(RepeatFilter())
