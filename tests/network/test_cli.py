"""``hin`` network subcommands on bad input or with no network running."""

from __future__ import annotations

import json
from pathlib import Path

from tests.network.conftest import run_hin


def test_up_rejects_unknown_replica_service(tmp_path: Path) -> None:
    result = run_hin(tmp_path, "up", "--replicas", "pharmacy=2")
    assert result.returncode == 2
    assert "unknown service 'pharmacy'" in result.stderr


def test_up_rejects_bad_replica_count(tmp_path: Path) -> None:
    result = run_hin(tmp_path, "up", "--replicas", "labs=0")
    assert result.returncode == 2
    assert "invalid replica count 'labs=0'" in result.stderr


def test_status_without_network(tmp_path: Path) -> None:
    result = run_hin(tmp_path, "status", "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout)["status"] == "not running"


def test_down_without_network_succeeds(tmp_path: Path) -> None:
    result = run_hin(tmp_path, "down")
    assert result.returncode == 0
    assert "no network recorded" in result.stdout


def test_traces_show_unknown_trace(tmp_path: Path) -> None:
    result = run_hin(tmp_path, "traces", "show", "deadbeef")
    assert result.returncode == 1
    assert "no single trace matches 'deadbeef'" in result.stderr
