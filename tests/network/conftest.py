"""A running test network, started once per session with the real ``hin up``.

Stand-ins run the echo service under the names of authz, records and
billing, so the call policy, RBAC and routing are exercised without
depending on those services' domains. ``flaky`` has three replicas and the
third one fails every call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.network.devkeys import mint_token
from mesh.network.state import NetworkState
from mesh.network.topology import CallRule, ServiceDef, Topology

ROOT = Path(__file__).resolve().parents[2]
GRPCWEB_DIR = ROOT / "tests" / "grpcweb"
IDLE_STREAM_TEST = "test_idle_stream_delivers_after_minutes"
FAILING_INSTANCE = "2"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the idle-stream test last, so other tests run while its stream waits."""
    idle = [item for item in items if item.name == IDLE_STREAM_TEST]
    for item in idle:
        items.remove(item)
    items.extend(idle)


def stand_in(name: str, grpc_service: str) -> ServiceDef:
    """Return a service named ``name`` that runs the echo service."""
    return ServiceDef(
        name=name, module="mesh.runtime.echo", grpc_services=(grpc_service,)
    )


def mesh_test_topology() -> Topology:
    """Return the topology of the session's test network."""
    authz_prefixes = ("/hin.authz.v1.AuthzService/Check",)
    return Topology(
        services=(
            stand_in("authz", "hin.authz.v1.AuthzService"),
            stand_in("records", "hin.records.v1.RecordsService"),
            stand_in("billing", "hin.billing.v1.BillingService"),
            ServiceDef(
                name="echo",
                module="mesh.runtime.echo",
                grpc_services=("hin.echo.v1.EchoService",),
                streaming_methods=("hin.echo.v1.EchoService/EchoStream",),
            ),
            ServiceDef(
                name="flaky",
                module="tests.network.flaky_service",
                grpc_services=("hin.test.v1.FlakyService",),
                replicas=3,
                environment={
                    "PYTHONPATH": str(ROOT),
                    "HIN_TEST_FAILING_INSTANCE": FAILING_INSTANCE,
                },
            ),
        ),
        calls=(
            CallRule("records", "authz", authz_prefixes),
            CallRule("billing", "authz", authz_prefixes),
            CallRule("echo", "authz", authz_prefixes),
            CallRule("records", "echo", ("/hin.echo.v1.EchoService/Echo",)),
        ),
    )


def run_hin(
    state_dir: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the ``hin`` command against ``state_dir`` and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "mesh.network.cli", "--state", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "HIN_LOG_LEVEL": "INFO"},
        check=False,
    )


@dataclass
class RunningNetwork:
    """A network started by ``hin up`` for tests."""

    state_dir: Path
    state: NetworkState
    #: The grpc-web client's two-minute stream, started with the network.
    idle_stream: subprocess.Popen[str] | None = None

    def hin(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``hin`` against this network."""
        return run_hin(self.state_dir, *args, timeout=timeout)


def start_network(state_dir: Path, topology: Topology) -> RunningNetwork:
    """Write ``topology`` and run ``hin up``; fail the test if it fails."""
    state_dir.mkdir(parents=True, exist_ok=True)
    topology_path = state_dir / "test-topology.json"
    topology_path.write_text(json.dumps(topology.to_dict()))
    result = run_hin(state_dir, "up", "--topology", str(topology_path))
    if result.returncode != 0:
        run_hin(state_dir, "down")
        pytest.fail(f"hin up failed:\n{result.stdout}\n{result.stderr}")
    return RunningNetwork(state_dir=state_dir, state=NetworkState.load(state_dir))


def person_token(state_dir: Path) -> str:
    """Return a doctor's development token for the network in ``state_dir``."""
    return mint_token(
        state_dir, subject="web-user", roles=["doctor"], organization_id="org-1"
    )


def grpcweb_command(network: RunningNetwork, action: str, *args: str) -> list[str]:
    """Return the command that runs the Node grpc-web client against the ingress."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the grpc-web client needs Node 18 or newer")
    return [node, "client.js", action, f"http://{network.state.ingress}", *args]


def start_idle_stream(network: RunningNetwork) -> subprocess.Popen[str]:
    """Start a grpc-web stream of three messages one minute apart."""
    token = person_token(network.state_dir)
    return subprocess.Popen(
        grpcweb_command(network, "stream", token, "late", "3", "60000"),
        cwd=GRPCWEB_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def mesh_network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNetwork]:
    """The session's test network; ``hin down`` stops it at the end."""
    network = start_network(
        tmp_path_factory.mktemp("mesh") / "state", mesh_test_topology()
    )
    # The idle-stream test needs two minutes of wall time; starting its stream
    # now lets the other tests run meanwhile instead of after it.
    if any(item.name == IDLE_STREAM_TEST for item in request.session.items):
        network.idle_stream = start_idle_stream(network)
    try:
        yield network
    finally:
        if network.idle_stream is not None and network.idle_stream.poll() is None:
            network.idle_stream.kill()
            network.idle_stream.communicate()
        network.hin("down")
