"""Run the sample service's relay or consumer in a subprocess of a test.

Usage: ``python worker.py relay|consumer``. Settings come from the
environment: HIN_DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, HIN_TEST_GROUP_ID
(consumer group), HIN_TEST_CRASH_AT and HIN_TEST_CRASH_EVENT_ID.

With HIN_TEST_CRASH_AT=after_delivery the relay kills itself with SIGKILL
after the broker confirmed a batch and before the rows are marked sent. With
after_transaction the consumer kills itself after the handler's transaction
for HIN_TEST_CRASH_EVENT_ID committed and before its offset commit. The
consumer prints one JSON line per handled record.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bus_sample import HANDLER  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from mesh.runtime.events import (  # noqa: E402
    ConsumerOptions,
    Envelope,
    EventConsumer,
    Outbox,
    OutboxRelay,
    RelayOptions,
    consumer_config,
    producer_config,
)
from mesh.runtime.storage import Database  # noqa: E402

#: A dead member leaves the group after the session timeout, and the next
#: member joins after about half of it, so tests lower it.
FAST_GROUP = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "500"}
CRASH_AT = os.environ.get("HIN_TEST_CRASH_AT", "")
#: The consumer crashes only on this event, so records of other tests on the
#: shared topic do not trigger it.
CRASH_EVENT_ID = os.environ.get("HIN_TEST_CRASH_EVENT_ID", "")


def crash() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def run_relay(db: Database, bootstrap: str) -> None:
    def after_delivery(seqs: Sequence[int]) -> None:
        print(json.dumps({"delivered": list(seqs)}), flush=True)
        if CRASH_AT == "after_delivery":
            crash()

    relay = OutboxRelay(
        db=db,
        outbox=Outbox(service="sample"),
        producer_config=producer_config(
            bootstrap=bootstrap,
            client_id="sample.worker",
            extra={},
            delivery_timeout=10.0,
        ),
        tracer_provider=TracerProvider(),
        options=RelayOptions(delivery_timeout=10.0),
        after_delivery=after_delivery,
    )
    relay.publish_pending()
    relay.stop(timeout=5.0)
    print(json.dumps({"pending": relay.pending_count()}), flush=True)


def run_consumer(db: Database, bootstrap: str) -> None:
    group_id = os.environ["HIN_TEST_GROUP_ID"]
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())

    def after_transaction(envelope: Envelope, applied: bool) -> None:
        line = {"event_id": envelope.id, "applied": applied, "offset": envelope.offset}
        print(json.dumps(line), flush=True)
        if CRASH_AT == "after_transaction" and envelope.id == CRASH_EVENT_ID:
            crash()

    consumer = EventConsumer(
        service="sample",
        db=db,
        handlers=[HANDLER],
        topics=[HANDLER.topic],
        consumer_config=consumer_config(
            bootstrap=bootstrap,
            group_id=group_id,
            client_id="sample.worker",
            extra=FAST_GROUP,
        ),
        producer_config=producer_config(
            bootstrap=bootstrap,
            client_id="sample.worker",
            extra={},
            delivery_timeout=10.0,
        ),
        tracer_provider=TracerProvider(),
        options=ConsumerOptions(max_attempts=2, backoff_initial=0.05),
        after_transaction=after_transaction,
    )
    consumer.start()
    stopped.wait()
    consumer.stop(timeout=10.0)


def main() -> None:
    db = Database(os.environ["HIN_DATABASE_URL"])
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    if sys.argv[1] == "relay":
        run_relay(db, bootstrap)
    else:
        run_consumer(db, bootstrap)
    db.dispose()


if __name__ == "__main__":
    main()
