"""Composition root of the records service."""

from __future__ import annotations

from hin.records.v1 import records_service_pb2_grpc as pb_grpc
from mesh.runtime.server import BuildContext, ServiceSpec
from svc_records.handlers import build_handlers
from svc_records.servicer import RecordsServicer
from svc_records.store import RecordsBase


def build(ctx: BuildContext) -> ServiceSpec:
    """Wire the servicer and the event handlers of one records process."""
    servicer = RecordsServicer(db=ctx.db, outbox=ctx.outbox, authorizer=ctx.authorizer)
    return ServiceSpec(
        name="records",
        register=[(pb_grpc.add_RecordsServiceServicer_to_server, servicer)],
        service_names=["hin.records.v1.RecordsService"],
        migrations="svc_records:migrations",
        metadata=RecordsBase.metadata,
        handlers=build_handlers(ctx.outbox),
    )
