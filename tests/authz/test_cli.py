"""``hin audit`` against a running authz service, as on a live network.

A network.json whose ingress is the package's authz service replaces
``hin up``; the command then dials it exactly as it dials the ingress Envoy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mesh.network.cli import main
from mesh.network.state import NetworkState
from tests.authz.conftest import AuthzHarness, Person

DOCTOR = Person("c-dr", ("doctor",), "hosp-a", practitioner_id="c-pr")


@pytest.fixture(scope="module")
def network(authz: AuthzHarness) -> AuthzHarness:
    state = NetworkState(state_dir=str(authz.state), ingress=authz.address)
    state.path.write_text(json.dumps(state.to_dict()))
    authz.register("c-p1", "hosp-a")
    authz.book("c-ap-1", "c-p1", "c-pr", "hosp-a")
    return authz


async def _run(*argv: str) -> int:
    # The command blocks on its gRPC call while the server runs on this loop.
    return await asyncio.to_thread(main, list(argv))


async def test_verify_through_network(
    network: AuthzHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    await network.check(DOCTOR, "records.clinical.read", "c-p1")
    code = await _run("--state", str(network.state), "audit", "verify")
    output = capsys.readouterr().out
    assert code == 0
    assert "audit chain intact" in output


async def test_patient_through_network(
    network: AuthzHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    decision = await network.check(DOCTOR, "records.clinical.read", "c-p1")
    code = await _run(
        "--state", str(network.state), "audit", "patient", "c-p1", "--org", "hosp-a"
    )
    output = capsys.readouterr().out
    rows = network.audit_rows(audit_id=decision.audit_id)
    assert code == 0
    assert "c-dr " in output
    assert rows[0].trace_id in output


async def test_patient_needs_org(
    network: AuthzHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _run("--state", str(network.state), "audit", "patient", "c-p1")
    assert code == 2
    assert "--org is required" in capsys.readouterr().err


async def test_verify_without_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _run("--state", str(tmp_path), "audit", "verify")
    assert code == 2
    assert "hin up" in capsys.readouterr().err
