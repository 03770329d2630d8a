"""``hin dlq``: list dead-lettered events and send them back to their topic."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mesh.network.broker import BrokerError, bootstrap_from_environment
from mesh.runtime.events.dead_letters import (
    DeadLetterError,
    read_dead_letters,
    replay_dead_letters,
)
from mesh.runtime.settings import SettingsError, parse_key_values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin dlq list`` and ``hin dlq replay``."""
    parser = subparsers.add_parser(
        "dlq", help="list dead-lettered events or send them back to their topic"
    )
    actions = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    list_parser = actions.add_parser("list", help="list the records of the .dlq topics")
    _add_topic(list_parser)
    list_parser.add_argument(
        "--json", action="store_true", help="print one JSON object per line"
    )
    list_parser.set_defaults(func=run_list)

    replay_parser = actions.add_parser(
        "replay",
        help="send dead letters not yet replayed back to their original topic",
    )
    _add_topic(replay_parser)
    replay_parser.set_defaults(func=run_replay)


def _add_topic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic",
        default="",
        help="event topic or its .dlq topic, such as hin.records.events.v1 "
        "(default: every .dlq topic)",
    )


def run_list(args: argparse.Namespace) -> int:
    """Print the dead letters, as a table or as JSON lines."""
    try:
        letters = read_dead_letters(
            bootstrap=bootstrap_from_environment(args.state),
            topic=args.topic,
            extra=_kafka_config(),
        )
    except (BrokerError, DeadLetterError, SettingsError) as exc:
        print(f"hin dlq list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for letter in letters:
            print(json.dumps(letter.to_dict()))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    columns = ("TOPIC", "PARTITION", "OFFSET", "EVENT TYPE", "EVENT ID", "GROUP")
    print("\t".join((*columns, "ERROR", "ATTEMPTS", "REPLAYED")))
    for letter in letters:
        print(
            f"{letter.original_topic}\t{letter.original_partition}\t"
            f"{letter.original_offset}\t{letter.event_type}\t{letter.event_id}\t"
            f"{letter.consumer_group}\t{letter.error_type}: {letter.error_message}\t"
            f"{letter.attempts}\t{'yes' if letter.replayed else 'no'}"
        )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Send the dead letters back and print how many were sent."""
    try:
        count = replay_dead_letters(
            bootstrap=bootstrap_from_environment(args.state),
            topic=args.topic,
            extra=_kafka_config(),
        )
    except (BrokerError, DeadLetterError, SettingsError) as exc:
        print(f"hin dlq replay: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {count} dead letters")
    return 0


def _kafka_config() -> dict[str, str]:
    return parse_key_values(os.environ.get("HIN_KAFKA_CONFIG", ""))
