"""Composition root of svc_labs: settings, servicer, handlers, MLLP listener."""

from __future__ import annotations

from dataclasses import dataclass

from hin.labs.v1 import labs_service_pb2_grpc as pb_grpc
from mesh.runtime.server import BuildContext, ServiceSpec
from svc_labs.domain import CriticalLimits
from svc_labs.handlers import PatientHandlers
from svc_labs.hl7v2.messages import ReadingRules
from svc_labs.ingest import Hl7Ingestor
from svc_labs.mllp import MllpListener
from svc_labs.servicer import LabsServicer
from svc_labs.settings import LabsSettings
from svc_labs.store import LabsBase

SERVICE_NAME = "hin.labs.v1.LabsService"


@dataclass
class LabsApp:
    """Parts of one svc_labs process, kept so tests can reach the listener."""

    settings: LabsSettings
    servicer: LabsServicer
    ingestor: Hl7Ingestor
    listener: MllpListener | None
    spec: ServiceSpec


def create_app(ctx: BuildContext) -> LabsApp:
    """Wire svc_labs from the host's collaborators."""
    settings = LabsSettings.from_service_settings(ctx.settings)
    limits = CriticalLimits.load(settings.critical_limits_path)
    servicer = LabsServicer(
        db=ctx.db, outbox=ctx.outbox, authorizer=ctx.authorizer, limits=limits
    )
    ingestor = Hl7Ingestor(
        db=ctx.db,
        outbox=ctx.outbox,
        rules=ReadingRules(
            facility_zones=settings.facility_zones,
            default_zone=settings.default_zone,
            identifier_systems=settings.identifier_systems,
        ),
        limits=limits,
    )
    listener = None
    background = []
    if settings.mllp is not None:
        listener = MllpListener(options=settings.mllp, handler=ingestor.handle)
        listener.bind()
        background.append(listener.run)
    spec = ServiceSpec(
        name="labs",
        register=[(pb_grpc.add_LabsServiceServicer_to_server, servicer)],
        service_names=[SERVICE_NAME],
        migrations="svc_labs:migrations",
        metadata=LabsBase.metadata,
        handlers=PatientHandlers(outbox=ctx.outbox).handlers(),
        background=background,
    )
    return LabsApp(
        settings=settings,
        servicer=servicer,
        ingestor=ingestor,
        listener=listener,
        spec=spec,
    )


def build(ctx: BuildContext) -> ServiceSpec:
    """Build the ServiceSpec that mesh.runtime.server.run_service hosts."""
    return create_app(ctx).spec
