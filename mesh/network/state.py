"""The running network as recorded in ``<state>/network.json``.

The supervisor behind ``hin up`` writes this file; ``hin status``, the
clients in ``mesh.network.clients``, ``hin import`` and ``hin demo`` read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NETWORK_FILE = "network.json"

#: Values of ``NetworkState.status``.
STARTING, READY, FAILED, STOPPING, STOPPED = (
    "starting",
    "ready",
    "failed",
    "stopping",
    "stopped",
)
#: Values of ``ReplicaState.state``.
RUNNING, EXITED = "running", "exited"


class NetworkNotRunning(RuntimeError):
    """No network is recorded in the state folder; run ``hin up`` first."""


@dataclass
class ReplicaState:
    """One service process and its Envoy sidecar."""

    index: int
    #: host:port of the service's own plaintext gRPC server (loopback).
    address: str
    #: host:port of the sidecar's mTLS inbound listener.
    sidecar_inbound: str
    #: host:port of the sidecar's admin interface.
    sidecar_admin: str = ""
    #: {upstream service: host:port of this sidecar's outbound listener}.
    outbound: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    sidecar_pid: int = 0
    #: host:port of the MLLP listener (labs only), else "".
    mllp: str = ""
    state: str = RUNNING
    exit_code: int | None = None
    log: str = ""
    sidecar_log: str = ""


@dataclass
class ServiceState:
    """All replicas of one service."""

    module: str
    replicas: list[ReplicaState] = field(default_factory=list)


@dataclass
class NetworkState:
    """Everything ``hin up`` started, with addresses and process ids."""

    state_dir: str
    status: str = STARTING
    error: str = ""
    supervisor_pid: int = 0
    control_socket: str = ""
    kafka_bootstrap: str = ""
    #: Whether the supervisor started the broker (else KAFKA_BOOTSTRAP_SERVERS).
    embedded_broker: bool = False
    #: Process id of the embedded broker, 0 when KAFKA_BOOTSTRAP_SERVERS is used.
    broker_pid: int = 0
    #: host:port of the ingress Envoy (grpc-web and native gRPC).
    ingress: str = ""
    ingress_admin: str = ""
    ingress_pid: int = 0
    #: host:port of the OTLP/gRPC endpoint services and Envoys export to.
    trace_receiver: str = ""
    ca_path: str = ""
    services: dict[str, ServiceState] = field(default_factory=dict)
    #: Services of the topology whose package is not installed here.
    missing: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """Path of the network file."""
        return Path(self.state_dir) / NETWORK_FILE

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form written to network.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkState:
        """Read the JSON form of network.json."""
        services = {
            name: ServiceState(
                module=value.get("module", ""),
                replicas=[ReplicaState(**replica) for replica in value["replicas"]],
            )
            for name, value in data.get("services", {}).items()
        }
        fields = {k: v for k, v in data.items() if k != "services"}
        return cls(**fields, services=services)

    def save(self) -> None:
        """Write network.json atomically, so readers never see half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(self.to_dict(), indent=2))
        staging.replace(self.path)

    @classmethod
    def load(cls, state_dir: Path) -> NetworkState:
        """Read ``<state_dir>/network.json``; raise NetworkNotRunning if absent."""
        path = Path(state_dir) / NETWORK_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NetworkNotRunning(
                f"no network recorded in {path}; start one with `hin up`"
            ) from None
        return cls.from_dict(data)

    def replica(self, service: str, index: int = 0) -> ReplicaState:
        """Return one replica of ``service``; raise KeyError naming it if absent."""
        try:
            return self.services[service].replicas[index]
        except (KeyError, IndexError):
            raise KeyError(
                f"service {service!r} replica {index} is not in this network; "
                f"running services: {sorted(self.services)}"
            ) from None

    def recorded_pids(self) -> list[int]:
        """Return every process id recorded, including zeros for none."""
        pids = [self.supervisor_pid, self.ingress_pid, self.broker_pid]
        for service in self.services.values():
            for replica in service.replicas:
                pids += [replica.pid, replica.sidecar_pid]
        return pids

    def live_processes(self) -> list[int]:
        """Return the recorded processes that still run and belong to this network.

        A process id from an old network.json may have been reused by an
        unrelated program, so a process counts only when its command line or
        environment names this state folder or the broker's address.
        """
        markers = [self.state_dir.encode()]
        if self.broker_pid:
            markers.append(self.kafka_bootstrap.encode())
        return [
            pid
            for pid in self.recorded_pids()
            if process_alive(pid) and _mentions(pid, markers)
        ]

    def mllp_addresses(self, service: str = "labs") -> list[str]:
        """Return the MLLP listener addresses of every replica of ``service``."""
        if service not in self.services:
            return []
        return [r.mllp for r in self.services[service].replicas if r.mllp]


def process_alive(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _mentions(pid: int, markers: list[bytes]) -> bool:
    text = b""
    for name in ("cmdline", "environ"):
        try:
            text += Path(f"/proc/{pid}/{name}").read_bytes()
        except OSError:
            continue
    return any(marker in text for marker in markers)
