"""Echo service: the benchmark floor and a mesh test target (no patient data).

Run one with ``python -m mesh.runtime.echo``; it reads the usual settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from hin.echo.v1 import echo_service_pb2 as pb
from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc
from mesh.runtime.principal import current_principal
from mesh.runtime.server import BuildContext, ServiceSpec, run_service


class EchoServicer(pb_grpc.EchoServiceServicer):
    def __init__(self, *, instance_id: str) -> None:
        self._instance_id = instance_id

    async def Echo(
        self, request: pb.EchoRequest, context: grpc.aio.ServicerContext
    ) -> pb.EchoResponse:
        if request.delay_ms > 0:
            await asyncio.sleep(request.delay_ms / 1000)
        if request.fail_with_code:
            code = _status_code(request.fail_with_code)
            await context.abort(code, f"echo asked to fail with {code.name}")
        return pb.EchoResponse(
            message=request.message,
            instance_id=self._instance_id,
            caller=current_principal().subject,
        )

    async def EchoStream(
        self, request: pb.EchoStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EchoStreamResponse]:
        for sequence in range(request.count):
            if sequence and request.interval_ms > 0:
                await asyncio.sleep(request.interval_ms / 1000)
            yield pb.EchoStreamResponse(message=request.message, sequence=sequence)


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def build(ctx: BuildContext) -> ServiceSpec:
    return ServiceSpec(
        name="echo",
        register=[
            (
                pb_grpc.add_EchoServiceServicer_to_server,
                EchoServicer(instance_id=ctx.settings.instance_id),
            )
        ],
        service_names=["hin.echo.v1.EchoService"],
    )


if __name__ == "__main__":
    run_service("echo", build)
