"""Test service for outlier detection: one replica fails every call.

``python -m tests.network.flaky_service`` serves ``hin.test.v1.FlakyService``
with the echo messages. The replica whose HIN_INSTANCE_ID equals
HIN_TEST_FAILING_INSTANCE answers every Echo call with UNAVAILABLE in
trailers; the others echo the message and their instance id.
"""

from __future__ import annotations

import os
from typing import Any

import grpc

from hin.echo.v1 import echo_service_pb2 as pb
from mesh.runtime.server import BuildContext, ServiceSpec, run_service

SERVICE_NAME = "hin.test.v1.FlakyService"
ECHO_PATH = f"/{SERVICE_NAME}/Echo"


def build(ctx: BuildContext) -> ServiceSpec:
    instance = ctx.settings.instance_id
    failing = os.environ.get("HIN_TEST_FAILING_INSTANCE", "")

    async def echo(
        request: pb.EchoRequest, context: grpc.aio.ServicerContext
    ) -> pb.EchoResponse:
        if instance == failing:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "this replica always fails"
            )
        return pb.EchoResponse(message=request.message, instance_id=instance)

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=pb.EchoRequest.FromString,
                response_serializer=pb.EchoResponse.SerializeToString,
            )
        },
    )

    def add(_: Any, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    return ServiceSpec(
        name="flaky", register=[(add, None)], service_names=[SERVICE_NAME]
    )


if __name__ == "__main__":
    run_service("flaky", build)
