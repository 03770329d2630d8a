"""``hin restart SERVICE``: restart every replica of one service."""

from __future__ import annotations

import argparse
import sys

from mesh.network.state import NetworkNotRunning, NetworkState, process_alive
from mesh.network.supervisor import send_control


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restart", help="restart one service's replicas and wait until SERVING"
    )
    parser.add_argument("service", help="service name, e.g. billing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state_dir = args.state.resolve()
    try:
        state = NetworkState.load(state_dir)
    except NetworkNotRunning as exc:
        print(f"hin restart: {exc}", file=sys.stderr)
        return 3
    if not process_alive(state.supervisor_pid):
        print(
            "hin restart: the network's supervisor is not running; run `hin up`",
            file=sys.stderr,
        )
        return 3
    try:
        answer = send_control(
            state_dir, {"command": "restart", "service": args.service}, timeout=180.0
        )
    except OSError as exc:
        print(f"hin restart: cannot reach the supervisor: {exc}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"hin restart: {answer.get('error', 'failed')}", file=sys.stderr)
        return 1
    print(f"{args.service} restarted")
    return 0
