"""Ingress: JWT validation, routing, outlier detection and tracing."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from hin.echo.v1 import echo_service_pb2 as pb
from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc
from mesh.network.clients import admin_metadata, ingress_channel_sync
from mesh.network.devkeys import mint_token
from mesh.network.tracestore import TraceStore
from tests.network.conftest import FAILING_INSTANCE, RunningNetwork

pytestmark = pytest.mark.mesh

FLAKY_ECHO = "/hin.test.v1.FlakyService/Echo"


def echo(
    network: RunningNetwork, metadata: tuple[tuple[str, str], ...]
) -> pb.EchoResponse:
    """Call EchoService.Echo through the ingress."""
    with ingress_channel_sync(network.state_dir) as channel:
        return pb_grpc.EchoServiceStub(channel).Echo(
            pb.EchoRequest(message="ping"), metadata=metadata, timeout=10
        )


def rejection(
    network: RunningNetwork, metadata: tuple[tuple[str, str], ...]
) -> grpc.RpcError:
    """Return the error of an Echo call expected to fail."""
    try:
        echo(network, metadata)
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded")


def test_request_without_jwt_rejected(mesh_network: RunningNetwork) -> None:
    error = rejection(mesh_network, ())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Jwt is missing" in (error.details() or "")


def test_jwt_from_unknown_key_rejected(mesh_network: RunningNetwork) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        {
            "iss": "https://hin.local/dev-issuer",
            "aud": "hin",
            "sub": "x",
            "exp": int(time.time()) + 60,
        },
        stranger,
        algorithm="ES256",
    )
    error = rejection(mesh_network, (("authorization", f"Bearer {token}"),))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_jwt_wrong_audience_rejected(mesh_network: RunningNetwork) -> None:
    token = mint_token(
        mesh_network.state_dir,
        subject="someone",
        roles=["doctor"],
        organization_id="org-1",
        audience="another-audience",
    )
    error = rejection(mesh_network, (("authorization", f"Bearer {token}"),))
    # Envoy's jwt_authn answers a valid token for another audience with 403.
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Audiences in Jwt are not allowed" in (error.details() or "")


def test_valid_jwt_reaches_service(mesh_network: RunningNetwork) -> None:
    reply = echo(mesh_network, admin_metadata(mesh_network.state_dir))
    assert reply.message == "ping"
    # The service verified the forwarded token again and saw the person.
    assert reply.caller == "hin-cli"


def test_health_through_ingress_needs_no_jwt(mesh_network: RunningNetwork) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with ingress_channel_sync(mesh_network.state_dir) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(),
            metadata=(("x-hin-service", "records"),),
            timeout=5,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_failing_replica_ejected(mesh_network: RunningNetwork) -> None:
    metadata = admin_metadata(mesh_network.state_dir)
    outcomes: Counter[str] = Counter()
    with ingress_channel_sync(mesh_network.state_dir) as channel:
        method = channel.unary_unary(
            FLAKY_ECHO,
            request_serializer=pb.EchoRequest.SerializeToString,
            response_deserializer=pb.EchoResponse.FromString,
        )
        for number in range(300):
            try:
                reply = method(pb.EchoRequest(message=str(number)), metadata=metadata)
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
            else:
                outcomes[f"instance-{reply.instance_id}"] += 1

    # Five consecutive UNAVAILABLE answers eject the failing replica, and
    # round robin sends it every third call until then: about 5 failures.
    assert outcomes["UNAVAILABLE"] >= 1
    assert outcomes["UNAVAILABLE"] <= 15
    assert outcomes[f"instance-{FAILING_INSTANCE}"] == 0
    assert outcomes["instance-0"] + outcomes["instance-1"] >= 285

    admin = mesh_network.state.ingress_admin
    with urllib.request.urlopen(f"http://{admin}/stats?filter=svc_flaky.outlier") as r:
        stats = dict(
            line.split(": ", 1)
            for line in r.read().decode().splitlines()
            if ": " in line
        )
    assert (
        int(stats["cluster.svc_flaky.outlier_detection.ejections_enforced_total"]) >= 1
    )


def test_trace_spans_ingress_sidecar_service(mesh_network: RunningNetwork) -> None:
    reply_metadata = admin_metadata(mesh_network.state_dir)
    with ingress_channel_sync(mesh_network.state_dir) as channel:
        _, call = pb_grpc.EchoServiceStub(channel).Echo.with_call(
            pb.EchoRequest(message="trace me"), metadata=reply_metadata, timeout=10
        )
    # Envoy names the request's trace in its x-request-id; the trace id comes
    # back from the service in no header, so find the trace by its span name.
    store = TraceStore(mesh_network.state_dir / "traces")
    deadline = time.monotonic() + 30
    services: set[str] = set()
    while (
        time.monotonic() < deadline
        and not {"ingress", "echo-sidecar", "echo"} <= services
    ):
        time.sleep(1)
        for spans in store.traces().values():
            names = {span.name for span in spans}
            if "hin.echo.v1.EchoService/Echo" in names:
                services = {span.service for span in spans}
                if {"ingress", "echo-sidecar", "echo"} <= services:
                    break
    assert {"ingress", "echo-sidecar", "echo"} <= services
