"""``hin up``, ``status``, ``restart`` and ``down`` on a network of their own."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from mesh.network.state import NetworkState, process_alive
from mesh.network.topology import CallRule, Topology
from tests.network.conftest import RunningNetwork, stand_in, start_network

pytestmark = pytest.mark.mesh


@pytest.fixture(scope="module")
def small_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    topology = Topology(
        services=(
            stand_in("authz", "hin.authz.v1.AuthzService"),
            stand_in("billing", "hin.billing.v1.BillingService"),
            stand_in("records", "hin.records.v1.RecordsService"),
            replace(stand_in("labs", "hin.labs.v1.LabsService"), mllp=True, replicas=2),
        ),
        calls=(CallRule("billing", "authz", ("/hin.authz.v1.AuthzService/Check",)),),
    )
    network = start_network(tmp_path_factory.mktemp("lifecycle") / "state", topology)
    yield network
    network.hin("down")


def status(network: RunningNetwork) -> dict:
    result = network.hin("status", "--json")
    return json.loads(result.stdout)


def all_pids(state: NetworkState) -> list[int]:
    return [pid for pid in state.recorded_pids() if pid]


def test_status_reports_every_service_up(small_network: RunningNetwork) -> None:
    report = status(small_network)
    assert report["status"] == "ready"
    assert {name: s["state"] for name, s in report["services"].items()} == {
        "authz": "up",
        "billing": "up",
        "records": "up",
        "labs": "up",
    }
    assert report["ingress"] == small_network.state.ingress


def test_network_file_has_documented_keys(small_network: RunningNetwork) -> None:
    data = json.loads((small_network.state_dir / "network.json").read_text())
    assert data["kafka_bootstrap"].startswith("127.0.0.1:")
    assert data["ingress"].startswith("127.0.0.1:")
    assert data["trace_receiver"].startswith("127.0.0.1:")
    replica = data["services"]["billing"]["replicas"][0]
    assert set(replica) >= {"address", "sidecar_inbound", "pid", "mllp"}


def test_each_labs_replica_gets_mllp_port(small_network: RunningNetwork) -> None:
    replicas = small_network.state.services["labs"].replicas
    addresses = [replica.mllp for replica in replicas]
    assert len(set(addresses)) == 2
    assert status(small_network)["labs_mllp"] == addresses
    for replica in replicas:
        environment = Path(f"/proc/{replica.pid}/environ").read_bytes().split(b"\0")
        assert f"HIN_LABS_MLLP_ADDRESS={replica.mllp}".encode() in environment
        assert f"HIN_INSTANCE_ID={replica.index}".encode() in environment


def test_authz_reached_through_own_sidecar(small_network: RunningNetwork) -> None:
    billing = small_network.state.replica("billing")
    authz = small_network.state.replica("authz")
    billing_environment = Path(f"/proc/{billing.pid}/environ").read_bytes().split(b"\0")
    authz_environment = Path(f"/proc/{authz.pid}/environ").read_bytes().split(b"\0")
    assert billing.outbound["authz"] != authz.sidecar_inbound
    assert (
        f"HIN_AUTHZ_ADDRESS={billing.outbound['authz']}".encode() in billing_environment
    )
    assert b"HIN_AUTHZ_ADDRESS=" in authz_environment


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Allowed by the policy, so the call reaches the authz stand-in, which returns
        # UNIMPLEMENTED because it serves only EchoService.
        ("/hin.authz.v1.AuthzService/Check", grpc.StatusCode.UNIMPLEMENTED),
        ("/hin.authz.v1.AuthzService/GrantConsent", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_outbound_listener_reaches_authz(
    small_network: RunningNetwork, path: str, expected: grpc.StatusCode
) -> None:
    address = small_network.state.replica("billing").outbound["authz"]
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(path)(b"", timeout=5)
    assert raised.value.code() == expected


def test_logs_prints_service_log(small_network: RunningNetwork) -> None:
    result = small_network.hin("logs", "billing", "--lines", "1000")
    assert result.returncode == 0
    messages = [json.loads(line)["message"] for line in result.stdout.splitlines()]
    assert "serving" in messages


def test_logs_unknown_service_fails(small_network: RunningNetwork) -> None:
    result = small_network.hin("logs", "pharmacy")
    assert result.returncode == 2
    assert "'pharmacy'" in result.stderr


def test_killed_service_shown_down(small_network: RunningNetwork) -> None:
    billing = small_network.state.replica("billing")
    os.kill(billing.pid, signal.SIGKILL)

    deadline = time.monotonic() + 20
    report = status(small_network)
    while (
        report["services"]["billing"]["state"] != "down" and time.monotonic() < deadline
    ):
        time.sleep(0.5)
        report = status(small_network)
    assert report["services"]["billing"]["state"] == "down"
    assert report["services"]["authz"]["state"] == "up"
    assert report["services"]["records"]["state"] == "up"
    assert report["services"]["billing"]["replicas"][0]["exit_code"] == -signal.SIGKILL


def test_restart_brings_service_back(small_network: RunningNetwork) -> None:
    result = small_network.hin("restart", "billing")
    assert result.returncode == 0, result.stderr
    report = status(small_network)
    assert report["services"]["billing"]["state"] == "up"
    assert report["healthy"] is True


def test_down_leaves_no_process(small_network: RunningNetwork) -> None:
    state = NetworkState.load(small_network.state_dir)
    pids = all_pids(state)
    result = small_network.hin("down")
    assert result.returncode == 0, result.stderr
    assert [pid for pid in pids if process_alive(pid)] == []
    assert NetworkState.load(small_network.state_dir).status == "stopped"
    assert not Path(state.control_socket).exists()
    assert status(small_network)["services"]["records"]["state"] == "down"
    host, port = state.kafka_bootstrap.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_down_after_supervisor_killed(small_network: RunningNetwork) -> None:
    topology = small_network.state_dir / "test-topology.json"
    result = small_network.hin("up", "--topology", str(topology))
    assert result.returncode == 0, result.stderr
    state = NetworkState.load(small_network.state_dir)
    assert state.broker_pid > 0
    os.kill(state.supervisor_pid, signal.SIGKILL)

    result = small_network.hin("down")
    assert result.returncode == 0, result.stderr
    assert [pid for pid in all_pids(state) if process_alive(pid)] == []
