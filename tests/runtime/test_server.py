"""Service host and interceptor through a real in-process gRPC server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from hin.echo.v1 import echo_service_pb2 as pb
from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc
from mesh.network.devkeys import mint_token
from mesh.runtime.errors import FieldViolation, InvalidArgument, NotFound
from mesh.runtime.logging import JsonFormatter
from mesh.runtime.principal import current_principal
from mesh.runtime.server import BuildContext, ServiceHost, ServiceSpec
from mesh.runtime.settings import ServiceSettings, SettingsError


class ScriptedEcho(pb_grpc.EchoServiceServicer):
    """Echo whose message picks an outcome, to exercise the error mapping."""

    async def Echo(
        self, request: pb.EchoRequest, context: grpc.aio.ServicerContext
    ) -> pb.EchoResponse:
        if request.message == "invalid":
            raise InvalidArgument(
                "invalid request: message",
                violations=[FieldViolation("message", "must not be 'invalid'")],
            )
        if request.message == "missing":
            raise NotFound("thing t-1 not found", reason="THING_NOT_FOUND")
        if request.message == "crash":
            raise RuntimeError("secret internals: table patients locked")
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return pb.EchoResponse(
            message=request.message, caller=current_principal().subject
        )

    async def EchoStream(
        self, request: pb.EchoStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EchoStreamResponse]:
        for sequence in range(request.count):
            yield pb.EchoStreamResponse(message=request.message, sequence=sequence)
        if request.message == "invalid":
            raise InvalidArgument("stream failed after its messages")


def build(ctx: BuildContext) -> ServiceSpec:
    return ServiceSpec(
        name="echo",
        register=[(pb_grpc.add_EchoServiceServicer_to_server, ScriptedEcho())],
        service_names=["hin.echo.v1.EchoService"],
    )


def make_settings(state: Path, bootstrap: str) -> ServiceSettings:
    mint_token(state, subject="setup", roles=["doctor"], organization_id="h")
    return ServiceSettings.from_env(
        "echo",
        environ={
            "HIN_STATE_DIR": str(state),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        },
    )


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str):
    state = tmp_path_factory.mktemp("echo-state")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    host = ServiceHost(
        settings=make_settings(state, kafka_bootstrap),
        build=build,
        tracer_provider=provider,
    )
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield host, channel, state, exporter
    await channel.close()
    await host.stop(grace=1)


async def test_invalid_argument_names_field(running) -> None:
    _, channel, _, _ = running
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(message="invalid"))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    bad_request = error_details_pb2.BadRequest()
    packed = [d for d in status.details if d.Is(bad_request.DESCRIPTOR)]
    assert len(packed) == 1
    packed[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["message"]


async def test_not_found_carries_reason(running) -> None:
    _, channel, _, _ = running
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(message="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(caught.value)
    next(d for d in status.details if d.Is(info.DESCRIPTOR)).Unpack(info)
    assert info.reason == "THING_NOT_FOUND"


async def test_unhandled_error_hides_internals(running) -> None:
    _, channel, _, _ = running
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(message="crash"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "trace id" in (caught.value.details() or "")


async def test_stream_error_after_messages(running) -> None:
    _, channel, _, _ = running
    call = pb_grpc.EchoServiceStub(channel).EchoStream(
        pb.EchoStreamRequest(message="invalid", count=2)
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in call:
            received.append(item.sequence)
    assert received == [0, 1]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bearer_token_sets_principal(running) -> None:
    _, channel, state, _ = running
    token = mint_token(state, subject="dr-001", roles=["doctor"], organization_id="h")
    response = await pb_grpc.EchoServiceStub(channel).Echo(
        pb.EchoRequest(message="hi"), metadata=(("authorization", f"Bearer {token}"),)
    )
    assert response.caller == "dr-001"


async def test_expired_token_is_unauthenticated(running) -> None:
    _, channel, state, _ = running
    token = mint_token(
        state,
        subject="dr-001",
        roles=["doctor"],
        organization_id="h",
        lifetime_seconds=-120,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pb_grpc.EchoServiceStub(channel).Echo(
            pb.EchoRequest(message="hi"),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_sidecar_client_cert_names_service(running) -> None:
    _, channel, _, _ = running
    xfcc = "By=spiffe://hin.local/svc/echo;Hash=ab;URI=spiffe://hin.local/svc/labs"
    response = await pb_grpc.EchoServiceStub(channel).Echo(
        pb.EchoRequest(message="hi"), metadata=(("x-forwarded-client-cert", xfcc),)
    )
    assert response.caller == "spiffe://hin.local/svc/labs"


async def test_health_reports_serving(running) -> None:
    _, channel, _, _ = running
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(
        health_pb2.HealthCheckRequest(service="hin.echo.v1.EchoService")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_service(running) -> None:
    _, channel, _, _ = running
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for reply in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in reply.list_services_response.service]
        break
    assert "hin.echo.v1.EchoService" in names


async def test_server_span_per_call(running) -> None:
    _, channel, _, exporter = running
    exporter.clear()
    await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(message="span"))
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["hin.echo.v1.EchoService/Echo"]


async def test_caller_trace_context_is_parent(running) -> None:
    _, channel, _, exporter = running
    exporter.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    await pb_grpc.EchoServiceStub(channel).Echo(
        pb.EchoRequest(message="traced"), metadata=(("traceparent", traceparent),)
    )
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == trace_id


async def test_graceful_stop_finishes_inflight_call(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    host = ServiceHost(
        settings=make_settings(tmp_path, kafka_bootstrap),
        build=build,
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        slow = asyncio.ensure_future(
            stub.Echo(pb.EchoRequest(message="slow", delay_ms=600))
        )
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(host.stop(grace=5))
        response = await slow
        await stopping
    assert response.message == "slow"


def test_settings_reject_public_address() -> None:
    with pytest.raises(SettingsError) as caught:
        ServiceSettings.from_env(
            "echo",
            environ={
                "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                "HIN_GRPC_ADDRESS": "0.0.0.0:50051",
            },
        )
    assert "HIN_GRPC_ADDRESS" in str(caught.value)


def test_settings_require_bootstrap() -> None:
    with pytest.raises(SettingsError) as caught:
        ServiceSettings.from_env("echo", environ={})
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(caught.value)


def test_json_log_line_has_trace_ids() -> None:
    provider = TracerProvider()
    formatter = JsonFormatter(service="echo")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "rpc finished", (), None)
    record.patient_id = "p-1"
    with provider.get_tracer("t").start_as_current_span("op") as span:
        line = json.loads(formatter.format(record))
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert line["service"] == "echo"
    assert line["patient_id"] == "p-1"


async def test_client_span_is_parent_of_server_span(running) -> None:
    from mesh.runtime.channels import insecure_channel

    host, _, _, exporter = running
    exporter.clear()
    client_provider = TracerProvider()
    client_exporter = InMemorySpanExporter()
    client_provider.add_span_processor(SimpleSpanProcessor(client_exporter))
    async with insecure_channel(
        f"127.0.0.1:{host.port}", tracer_provider=client_provider
    ) as channel:
        await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(message="c"))
    (client_span,) = client_exporter.get_finished_spans()
    (server_span,) = exporter.get_finished_spans()
    assert server_span.context.trace_id == client_span.context.trace_id
    assert server_span.parent.span_id == client_span.context.span_id


def test_client_cert_header_needs_sidecar_token() -> None:
    from mesh.runtime.identity import Authenticator
    from mesh.runtime.principal import PrincipalKind

    authenticator = Authenticator(verifier=None, sidecar_token="s3cret")
    xfcc = "URI=spiffe://hin.local/svc/appointments"
    forged = authenticator.authenticate({"x-forwarded-client-cert": xfcc})
    wrong = authenticator.authenticate(
        {"x-forwarded-client-cert": xfcc, "x-hin-sidecar-token": "guess"}
    )
    genuine = authenticator.authenticate(
        {"x-forwarded-client-cert": xfcc, "x-hin-sidecar-token": "s3cret"}
    )
    assert forged.kind is PrincipalKind.ANONYMOUS
    assert wrong.kind is PrincipalKind.ANONYMOUS
    assert genuine.service_name == "appointments"
