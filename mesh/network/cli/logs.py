"""``hin logs SERVICE``: print a service's (or its sidecar's) log."""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

from mesh.network.state import NetworkNotRunning, NetworkState

#: Logs that belong to no service.
OTHER_LOGS = ("ingress", "broker", "supervisor")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("logs", help="print the log of a service")
    parser.add_argument(
        "service", help=f"service name, or one of: {', '.join(OTHER_LOGS)}"
    )
    parser.add_argument(
        "--replica", type=int, default=0, help="replica index (default 0)"
    )
    parser.add_argument(
        "--envoy", action="store_true", help="the sidecar's log instead"
    )
    parser.add_argument(
        "-n", "--lines", type=int, default=100, help="last lines to print (default 100)"
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing")
    parser.set_defaults(func=run)


def log_path(state_dir: Path, service: str, replica: int, envoy: bool) -> Path:
    """Return the log file of a service replica, its sidecar, or another part."""
    if service == "ingress":
        return state_dir / "logs" / "ingress-envoy.log"
    if service in OTHER_LOGS:
        return state_dir / "logs" / f"{service}.log"
    state = NetworkState.load(state_dir)
    entry = state.replica(service, replica)
    return Path(entry.sidecar_log if envoy else entry.log)


def run(args: argparse.Namespace) -> int:
    try:
        path = log_path(args.state.resolve(), args.service, args.replica, args.envoy)
    except (NetworkNotRunning, KeyError) as exc:
        print(f"hin logs: {exc.args[0]}", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"hin logs: no log at {path}", file=sys.stderr)
        return 2
    with path.open(errors="replace") as handle:
        for line in deque(handle, maxlen=args.lines):
            sys.stdout.write(line)
        while args.follow:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0
