"""network.json: round trip and which recorded processes count as ours."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.network.state import (
    NetworkNotRunning,
    NetworkState,
    ReplicaState,
    ServiceState,
)


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose environment names ``tmp_path`` as its state folder."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "HIN_STATE_DIR": str(tmp_path)},
    )
    yield process
    process.kill()
    process.wait()


def test_state_round_trips(tmp_path: Path) -> None:
    state = NetworkState(state_dir=str(tmp_path), ingress="127.0.0.1:8080")
    state.services["labs"] = ServiceState(
        module="svc_labs",
        replicas=[
            ReplicaState(
                index=0,
                address="127.0.0.1:1",
                sidecar_inbound="127.0.0.1:2",
                mllp="127.0.0.1:3",
            )
        ],
    )
    state.save()
    loaded = NetworkState.load(tmp_path)
    assert loaded == state
    assert loaded.mllp_addresses("labs") == ["127.0.0.1:3"]


def test_load_without_file_raises(tmp_path: Path) -> None:
    with pytest.raises(NetworkNotRunning, match="hin up"):
        NetworkState.load(tmp_path)


def test_unrelated_process_not_counted(tmp_path: Path) -> None:
    # This test process runs, but nothing in it names the state folder, as
    # with a process id reused after the network was gone.
    state = NetworkState(state_dir=str(tmp_path), supervisor_pid=os.getpid())
    assert state.live_processes() == []


def test_network_process_counted(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    state = NetworkState(state_dir=str(tmp_path), ingress_pid=sleeper.pid)
    assert state.live_processes() == [sleeper.pid]
