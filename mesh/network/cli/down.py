"""``hin down``: stop the network gracefully, in reverse start order."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from mesh.network.state import NetworkNotRunning, NetworkState, process_alive
from mesh.network.supervisor import send_control

#: The supervisor gives each service 15 s to drain, then stops the rest.
DOWN_TIMEOUT_SECONDS = 90.0
#: Time processes left behind by a dead supervisor get after SIGTERM.
LEFTOVER_GRACE_SECONDS = 15.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("down", help="stop every process of the network")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state_dir = args.state.resolve()
    try:
        state = NetworkState.load(state_dir)
    except NetworkNotRunning:
        print(f"hin down: no network recorded in {state_dir}")
        return 0
    if process_alive(state.supervisor_pid):
        try:
            send_control(state_dir, {"command": "stop"}, timeout=5.0)
        except OSError:
            os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT_SECONDS
        while process_alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.2)

    # Whatever the supervisor could not stop (it was killed, or timed out)
    # gets SIGTERM and then SIGKILL here, so nothing of the network remains.
    alive = NetworkState.load(state_dir).live_processes()
    _signal_all(alive, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while any(process_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_all([pid for pid in alive if process_alive(pid)], signal.SIGKILL)
    if alive:
        print(f"hin down: stopped leftover processes {alive}", file=sys.stderr)
    print("network stopped")
    return 0


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
