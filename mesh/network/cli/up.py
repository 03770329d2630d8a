"""``hin up``: start the network in the background and print its endpoints."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mesh.network.cli.status import print_endpoints
from mesh.network.state import (
    FAILED,
    NETWORK_FILE,
    READY,
    STARTING,
    NetworkNotRunning,
    NetworkState,
)
from mesh.network.topology import (
    Topology,
    TopologyError,
    default_topology,
    parse_replicas,
)

#: Time ``hin up`` waits for the whole network to report ready.
UP_TIMEOUT_SECONDS = 300.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="start the broker, services, sidecars, ingress and trace store"
    )
    parser.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="SERVICE=N",
        help="number of replicas of a service, e.g. labs=3; repeat for several",
    )
    parser.add_argument(
        "--topology",
        type=Path,
        default=None,
        help="JSON topology to run instead of the built-in one",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=UP_TIMEOUT_SECONDS,
        help=f"seconds to wait for the network (default {UP_TIMEOUT_SECONDS:.0f})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state_dir: Path = args.state.resolve()
    try:
        topology = Topology.load(args.topology) if args.topology else default_topology()
        topology.with_replicas(parse_replicas(args.replicas))
    except (TopologyError, OSError, json.JSONDecodeError) as exc:
        print(f"hin up: {exc}", file=sys.stderr)
        return 2
    try:
        existing = NetworkState.load(state_dir)
    except NetworkNotRunning:
        existing = None
    running = existing.live_processes() if existing is not None else []
    if running:
        print(
            f"hin up: a network is already running from {state_dir} "
            f"(processes {running}); run `hin down` first",
            file=sys.stderr,
        )
        return 1

    (state_dir / NETWORK_FILE).unlink(missing_ok=True)
    supervisor = _spawn_supervisor(state_dir, args.replicas, args.topology)
    state = _wait_for_network(state_dir, supervisor, args.timeout)
    if state is None or state.status != READY:
        error = state.error if state is not None else "the supervisor did not start"
        print(f"hin up: the network failed to start: {error}", file=sys.stderr)
        print(f"hin up: see {state_dir / 'logs'}", file=sys.stderr)
        if supervisor.poll() is None:
            supervisor.terminate()
        return 1
    print_endpoints(state)
    return 0


def _spawn_supervisor(
    state_dir: Path, replicas: list[str], topology: Path | None
) -> subprocess.Popen[bytes]:
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mesh.network.supervisor",
        "--state",
        str(state_dir),
    ]
    for item in replicas:
        command += ["--replicas", item]
    if topology is not None:
        command += ["--topology", str(topology.resolve())]
    with (logs / "supervisor.log").open("ab") as output:
        # A session of its own: the network outlives this command and the
        # terminal's Ctrl-C.
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )


def _wait_for_network(
    state_dir: Path, supervisor: subprocess.Popen[bytes], timeout: float
) -> NetworkState | None:
    deadline = time.monotonic() + timeout
    state: NetworkState | None = None
    while time.monotonic() < deadline:
        try:
            state = NetworkState.load(state_dir)
        except (NetworkNotRunning, json.JSONDecodeError):
            state = None
        if state is not None and state.status == READY:
            return state
        if state is not None and state.status == FAILED:
            supervisor.wait(60)
            return state
        if supervisor.poll() is not None:
            return state
        time.sleep(0.3)
    if state is not None and state.status == STARTING:
        state.error = f"not ready after {timeout:.0f} s"
    return state
