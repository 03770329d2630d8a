"""A grpc-web client from npm (@connectrpc/connect-node) through the ingress."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.network.conftest import (
    GRPCWEB_DIR,
    RunningNetwork,
    grpcweb_command,
    person_token,
    start_idle_stream,
)

pytestmark = pytest.mark.mesh


def run_client(
    network: RunningNetwork, *args: str, token: str = "", timeout: float = 60
) -> list[dict[str, Any]]:
    """Run the Node client and return the JSON objects it printed."""
    action, *rest = args
    result = subprocess.run(
        grpcweb_command(network, action, token, *rest),
        cwd=GRPCWEB_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_unary_call_through_ingress(mesh_network: RunningNetwork) -> None:
    token = person_token(mesh_network.state_dir)
    [reply] = run_client(mesh_network, "unary", "hello", token=token)
    assert reply["message"] == "hello"
    assert reply["caller"] == "web-user"


def test_error_before_message_reaches_client(mesh_network: RunningNetwork) -> None:
    token = person_token(mesh_network.state_dir)
    [reply] = run_client(mesh_network, "fail", "7", token=token)
    assert reply["error"]["name"] == "PermissionDenied"
    assert reply["error"]["message"] == "echo asked to fail with PERMISSION_DENIED"


def test_missing_jwt_rejected_for_grpc_web(mesh_network: RunningNetwork) -> None:
    [reply] = run_client(mesh_network, "unary", "hello")
    assert reply["error"]["name"] == "Unauthenticated"
    assert reply["error"]["message"] == "Jwt is missing"


def test_server_stream_through_ingress(mesh_network: RunningNetwork) -> None:
    token = person_token(mesh_network.state_dir)
    replies = run_client(mesh_network, "stream", "s", "3", "50", token=token)
    assert [r["sequence"] for r in replies] == [0, 1, 2]
    assert {r["message"] for r in replies} == {"s"}


def test_cors_preflight_exposes_grpc_status(mesh_network: RunningNetwork) -> None:
    response = httpx.options(
        f"http://{mesh_network.state.ingress}/hin.echo.v1.EchoService/Echo",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-grpc-web,authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    exposed = set(response.headers["access-control-expose-headers"].split(","))
    assert {"grpc-status", "grpc-message"} <= exposed


@pytest.mark.slow
def test_idle_stream_delivers_after_minutes(mesh_network: RunningNetwork) -> None:
    # Three messages a minute apart: the stream sits idle for a minute twice
    # and stays open for two minutes in all. The session fixture started it.
    process = mesh_network.idle_stream or start_idle_stream(mesh_network)
    stdout, stderr = process.communicate(timeout=200)
    assert process.returncode == 0, stderr
    replies = [json.loads(line) for line in stdout.splitlines()]
    assert [r["sequence"] for r in replies] == [0, 1, 2]
    assert replies[-1]["at_ms"] >= 120_000


def test_trailers_only_error_readable_by_browser(
    mesh_network: RunningNetwork,
) -> None:
    from hin.echo.v1 import echo_service_pb2 as pb

    # A grpc-web request as a browser's fetch sends it: one length-prefixed
    # message, and an Origin header that makes the response subject to CORS.
    message = pb.EchoRequest(message="x", fail_with_code=7).SerializeToString()
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    response = httpx.post(
        f"http://{mesh_network.state.ingress}/hin.echo.v1.EchoService/Echo",
        content=body,
        headers={
            "Origin": "http://localhost:3000",
            "Content-Type": "application/grpc-web+proto",
            "X-Grpc-Web": "1",
            "Authorization": f"Bearer {person_token(mesh_network.state_dir)}",
        },
    )
    assert response.headers["grpc-status"] == "7"
    assert "PERMISSION_DENIED" in response.headers["grpc-message"]
    exposed = set(response.headers["access-control-expose-headers"].split(","))
    assert {"grpc-status", "grpc-message"} <= exposed
