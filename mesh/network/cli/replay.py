"""``hin replay``: publish a service's outbox rows of a time range again."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from confluent_kafka import KafkaException
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.exc import SQLAlchemyError

from mesh.network.broker import BrokerError, bootstrap_from_environment
from mesh.runtime.events import (
    Outbox,
    OutboxRelay,
    RelayOptions,
    all_event_topics,
    ensure_topics,
    producer_config,
)
from mesh.runtime.events.relay import RelayError
from mesh.runtime.settings import SettingsError, parse_key_values
from mesh.runtime.storage import Database


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin replay``."""
    parser = subparsers.add_parser(
        "replay",
        help="publish a service's outbox rows of a time range again, for "
        "example after the broker lost its data (consumers skip duplicates)",
    )
    parser.add_argument(
        "--service", required=True, help="service name, such as records"
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="SQLAlchemy URL of the service's database "
        "(default: HIN_DATABASE_URL, else sqlite:///<state>/data/<service>.db)",
    )
    parser.add_argument(
        "--since",
        type=parse_time,
        default=None,
        help="first creation time to include, ISO 8601; UTC when no offset is "
        "given (default: the oldest row)",
    )
    parser.add_argument(
        "--until",
        type=parse_time,
        default=None,
        help="creation time to stop before, ISO 8601 (default: now)",
    )
    parser.set_defaults(func=run)


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}; use ISO 8601, such as 2026-01-31T08:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    """Publish the rows and print how many the broker confirmed."""
    url = (
        args.database_url
        or os.environ.get("HIN_DATABASE_URL", "")
        or f"sqlite:///{(args.state / 'data' / f'{args.service}.db').resolve()}"
    )
    try:
        extra = parse_key_values(os.environ.get("HIN_KAFKA_CONFIG", ""))
        bootstrap = bootstrap_from_environment(args.state)
    except (BrokerError, SettingsError) as exc:
        print(f"hin replay: {exc}", file=sys.stderr)
        return 1

    # The broker may have restarted empty, so the topics are created first.
    try:
        ensure_topics(bootstrap=bootstrap, topics=all_event_topics(), extra=extra)
    except KafkaException as exc:
        print(
            f"hin replay: creating topics on {bootstrap} failed: {exc.args[0]}; "
            "check that the broker is running",
            file=sys.stderr,
        )
        return 1
    db = Database(url)
    relay = OutboxRelay(
        db=db,
        outbox=Outbox(service=args.service),
        producer_config=producer_config(
            bootstrap=bootstrap,
            client_id=f"hin.{args.service}.replay",
            extra=extra,
            delivery_timeout=30.0,
        ),
        tracer_provider=TracerProvider(),
        options=RelayOptions(delivery_timeout=30.0),
    )
    try:
        count = relay.republish(since=args.since, until=args.until)
    except RelayError as exc:
        print(f"hin replay: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(
            f"hin replay: reading the outbox of {db.url!r} failed "
            f"({type(exc).__name__}); check --database-url and that the service "
            "has migrated its database",
            file=sys.stderr,
        )
        return 1
    finally:
        relay.stop(timeout=5.0)
        db.dispose()
    print(f"republished {count} events of service {args.service}")
    return 0
