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
    # is killed here, so nothing of the network keeps running.
    state = NetworkState.load(state_dir)
    leftovers = [state.supervisor_pid, state.ingress_pid]
    for service in state.services.values():
        for replica in service.replicas:
            leftovers += [replica.pid, replica.sidecar_pid]
    killed = [pid for pid in leftovers if process_alive(pid)]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    if killed:
        print(
            f"hin down: killed processes that did not stop: {killed}", file=sys.stderr
        )
    print("network stopped")
    return 0
