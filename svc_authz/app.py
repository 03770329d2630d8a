"""Composition root of the authz service."""

from __future__ import annotations

from hin.authz.v1 import authz_service_pb2_grpc as pb_grpc
from mesh.runtime.server import BuildContext, BuildFunction, ServiceSpec
from mesh.runtime.settings import ServiceSettings, SettingsError
from svc_authz.handlers import AuthzHandlers
from svc_authz.servicer import AuthzServicer, Clock, utc_now
from svc_authz.store import AuthzBase

SERVICE_NAME = "hin.authz.v1.AuthzService"


def trust_loopback_callers(settings: ServiceSettings) -> bool:
    """Read HIN_AUTHZ_TRUST_LOOPBACK_CALLERS ("true"/"false", default false).

    When true, Check, CheckBatch and RecordAudit accept callers that carry no
    service identity. That is only for running without the mesh, where no
    sidecar attests which service is calling; never enable it in production.
    """
    text = settings.service_setting("trust_loopback_callers", "false").lower()
    if text not in {"true", "false"}:
        raise SettingsError(
            f"HIN_AUTHZ_TRUST_LOOPBACK_CALLERS={text!r} is not true or false"
        )
    return text == "true"


def make_build(clock: Clock = utc_now) -> BuildFunction:
    """Return the composition root, with ``clock`` as the service's time."""

    def build(ctx: BuildContext) -> ServiceSpec:
        servicer = AuthzServicer(
            db=ctx.db,
            outbox=ctx.outbox,
            clock=clock,
            trust_loopback_callers=trust_loopback_callers(ctx.settings),
        )
        return ServiceSpec(
            name="authz",
            register=[(pb_grpc.add_AuthzServiceServicer_to_server, servicer)],
            service_names=[SERVICE_NAME],
            metadata=AuthzBase.metadata,
            migrations="svc_authz:migrations",
            handlers=AuthzHandlers(clock=clock).handlers(),
            on_call_finish=servicer.audit_call,
        )

    return build


build = make_build()
