"""``hin status``: state and endpoints of every service of the network."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from mesh.network.clients import operator_credentials
from mesh.network.state import (
    READY,
    RUNNING,
    NetworkNotRunning,
    NetworkState,
    process_alive,
)
from mesh.network.supervisor import check_health


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="show each service's state and the network's endpoints"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(collect_status(args.state.resolve()))
    except NetworkNotRunning as exc:
        if args.json:
            print(json.dumps({"status": "not running", "error": str(exc)}))
        else:
            print(f"hin status: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if report["healthy"] else 1


async def collect_status(state_dir: Path) -> dict[str, Any]:
    """Return the network's state, checking each replica through its sidecar.

    A replica is "up" when its process runs and it reports SERVING through
    its sidecar. A service is "up" when all replicas are, "degraded" when
    some are, and "down" when none is.
    """
    state = NetworkState.load(state_dir)
    supervisor_alive = process_alive(state.supervisor_pid)
    credentials = operator_credentials(state_dir)

    async def replica_report(name: str, index: int) -> dict[str, Any]:
        replica = state.services[name].replicas[index]
        running = replica.state == RUNNING and process_alive(replica.pid)
        health = (
            await check_health(replica.sidecar_inbound, name, credentials, timeout=2.0)
            if running
            else "UNREACHABLE"
        )
        return {
            "index": index,
            "state": "up" if running and health == "SERVING" else "down",
            "health": health,
            "process": "running" if running else "exited",
            "exit_code": replica.exit_code,
            "pid": replica.pid,
            "address": replica.address,
            "sidecar_inbound": replica.sidecar_inbound,
            "sidecar_admin": replica.sidecar_admin,
            "sidecar_running": process_alive(replica.sidecar_pid),
            "mllp": replica.mllp,
            "log": replica.log,
        }

    keys = [
        (name, replica.index)
        for name, service in state.services.items()
        for replica in service.replicas
    ]
    reports = await asyncio.gather(*(replica_report(*key) for key in keys))
    services: dict[str, Any] = {}
    for (name, _), report in zip(keys, reports, strict=True):
        services.setdefault(name, {"replicas": []})["replicas"].append(report)
    for service in services.values():
        up = sum(r["state"] == "up" for r in service["replicas"])
        total = len(service["replicas"])
        if up == total:
            service["state"] = "up"
        elif up:
            service["state"] = "degraded"
        else:
            service["state"] = "down"
    # The embedded broker keeps topics in memory only; when it is gone,
    # services still accept writes into their outboxes but no event flows.
    broker_running = process_alive(state.broker_pid) if state.embedded_broker else None
    ingress_running = process_alive(state.ingress_pid)
    healthy = (
        supervisor_alive
        and state.status == READY
        and broker_running is not False
        and ingress_running
        and all(s["state"] == "up" for s in services.values())
    )
    return {
        "status": state.status if supervisor_alive else "supervisor not running",
        "healthy": healthy,
        "error": state.error,
        "supervisor_pid": state.supervisor_pid,
        "ingress": state.ingress,
        "ingress_running": ingress_running,
        "kafka_bootstrap": state.kafka_bootstrap,
        "broker_running": broker_running,
        "trace_receiver": state.trace_receiver,
        "labs_mllp": state.mllp_addresses("labs"),
        "missing": state.missing,
        "services": services,
    }


def print_endpoints(state: NetworkState) -> None:
    """Print the endpoints of a started network."""
    print(f"ingress (grpc-web and gRPC): {state.ingress}")
    print(f"kafka bootstrap:             {state.kafka_bootstrap}")
    print(f"trace receiver (OTLP/gRPC):  {state.trace_receiver}")
    for name, service in state.services.items():
        for replica in service.replicas:
            line = f"{name}[{replica.index}]: sidecar {replica.sidecar_inbound}"
            if replica.mllp:
                line += f", MLLP {replica.mllp}"
            print(line)
    if state.missing:
        print(f"not installed, not started: {', '.join(state.missing)}")


def _print_report(report: dict[str, Any]) -> None:
    status = report["status"]
    if status == READY and not report["healthy"]:
        status = "degraded"
    print(f"network: {status}")
    if report["error"]:
        print(f"error: {report['error']}")
    ingress = "" if report["ingress_running"] else " (DOWN)"
    print(f"ingress: {report['ingress']}{ingress}")
    broker = " (embedded broker DOWN)" if report["broker_running"] is False else ""
    print(f"kafka bootstrap: {report['kafka_bootstrap']}{broker}")
    print(f"trace receiver: {report['trace_receiver']}")
    for name, service in report["services"].items():
        print(f"{name}: {service['state']}")
        for replica in service["replicas"]:
            details = f"  [{replica['index']}] {replica['state']} ({replica['health']})"
            details += f" sidecar {replica['sidecar_inbound']}"
            if replica["mllp"]:
                details += f" MLLP {replica['mllp']}"
            if replica["process"] == "exited":
                details += f" exit code {replica['exit_code']}"
            print(details)
    if report["missing"]:
        print(f"not installed: {', '.join(report['missing'])}")
