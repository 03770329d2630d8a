"""Authorizer that calls svc_authz over gRPC and audits calls without a decision.

``mesh.runtime.server.make_authorizer`` builds a ``RemoteAuthorizer`` when
``HIN_AUTHZ_ADDRESS`` is set. Every ``authorize()`` then becomes one
``AuthzService.Check`` call, and svc_authz commits the decision's audit record
before it returns, so no decision reaches a caller unaudited.

Decisions are not cached. Every access needs its audit record committed in
svc_authz before the calling service responds, which costs this round trip
whether or not the decision is known already. A cached allow would also
outlive a revoked consent, and revoking must take effect on the next request.

The server interceptor awaits ``audit_call`` before each response. For a call
that ended without a decision (rejected token, invalid request, a method that
touches no patient) it sends ``RecordAudit``, so those calls are in the trail
too, written before the caller sees the status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from opentelemetry import propagate, trace

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import authz_service_pb2_grpc as pb_grpc
from mesh.runtime.authz import Decision, Purpose, decided_in_current_call
from mesh.runtime.errors import Unavailable
from mesh.runtime.interceptors import CallOutcome
from mesh.runtime.principal import Principal, PrincipalKind
from mesh.runtime.telemetry import current_trace_id

logger = logging.getLogger(__name__)

#: Deadline of one Check; a decision that takes longer fails the call closed.
DEFAULT_TIMEOUT_SECONDS = 5.0

_SUBJECT_KINDS = {
    PrincipalKind.PERSON: pb.SUBJECT_KIND_PERSON,
    PrincipalKind.SERVICE: pb.SUBJECT_KIND_SERVICE,
    PrincipalKind.ANONYMOUS: pb.SUBJECT_KIND_ANONYMOUS,
}


class AuthzUnavailable(Unavailable):
    """svc_authz could not be reached or failed; access is denied meanwhile."""


def subject_from_principal(principal: Principal) -> pb.Subject:
    """Describe ``principal`` as the Subject message of the contract."""
    return pb.Subject(
        subject=principal.subject,
        kind=_SUBJECT_KINDS[principal.kind],
        roles=sorted(principal.roles),
        organization_id=principal.organization_id,
        practitioner_id=principal.practitioner_id,
        patient_id=principal.patient_id,
        service_name=principal.service_name,
    )


def current_method() -> str:
    """Return the gRPC method being served, such as "/hin.x.v1.XService/Get".

    The server interceptor names its span after the method, so the current
    span's name is the method; outside a server call this returns "".
    """
    name = getattr(trace.get_current_span(), "name", "")
    return f"/{name}" if isinstance(name, str) and "/" in name else ""


class RemoteAuthorizer:
    """Ask AuthzService.Check for each decision.

    Args:
        address: host:port of svc_authz (or of the local sidecar that routes
            to it).
        metadata: extra call metadata on every request. The sidecar adds the
            calling service's identity in the mesh; tests without Envoy pass
            an ``x-forwarded-client-cert`` entry here instead.
        timeout_seconds: deadline of each call to svc_authz.
        channel: an existing channel to use instead of dialing ``address``.
    """

    def __init__(
        self,
        *,
        address: str,
        metadata: Sequence[tuple[str, str]] = (),
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._address = address
        self._metadata = tuple(metadata)
        self._timeout = timeout_seconds
        self._channel = channel
        self._stub: pb_grpc.AuthzServiceStub | None = None

    def _get_stub(self) -> pb_grpc.AuthzServiceStub:
        # The channel is created on first use so that it binds to the running
        # event loop rather than to whichever loop existed at construction.
        if self._stub is None:
            if self._channel is None:
                self._channel = grpc.aio.insecure_channel(self._address)
            self._stub = pb_grpc.AuthzServiceStub(self._channel)
        return self._stub

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return self._metadata + tuple(carrier.items())

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = Purpose.PURPOSE_TREATMENT,
        organization_id: str = "",
    ) -> Decision:
        """Return svc_authz's decision; raise AuthzUnavailable when it fails."""
        request = pb.CheckRequest(
            subject=subject_from_principal(principal),
            action=action,
            patient_id=patient_id,
            purpose=purpose,  # type: ignore[arg-type]
            organization_id=organization_id,
            trace_id=current_trace_id(),
            method=current_method(),
        )
        try:
            response = await self._get_stub().Check(
                request, metadata=self._call_metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("Check", action, exc) from exc
        return Decision(
            allowed=response.allowed,
            reason=response.reason,
            emergency=response.emergency,
            redact_clinical=response.redact_clinical,
            audit_id=response.audit_id,
        )

    async def check_many(
        self,
        principal: Principal,
        *,
        action: str,
        patient_ids: Sequence[str],
        purpose: int = Purpose.PURPOSE_TREATMENT,
        organization_id: str = "",
    ) -> dict[str, Decision]:
        """Return one decision per patient; svc_authz audits each of them."""
        request = pb.CheckBatchRequest(
            subject=subject_from_principal(principal),
            action=action,
            patient_ids=list(patient_ids),
            purpose=purpose,  # type: ignore[arg-type]
            organization_id=organization_id,
            trace_id=current_trace_id(),
            method=current_method(),
        )
        try:
            response = await self._get_stub().CheckBatch(
                request, metadata=self._call_metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("CheckBatch", action, exc) from exc
        return {
            item.patient_id: Decision(
                allowed=item.allowed,
                reason=item.reason,
                emergency=item.emergency,
                redact_clinical=item.redact_clinical,
                audit_id=item.audit_id,
            )
            for item in response.decisions
        }

    async def audit_call(self, outcome: CallOutcome) -> None:
        """Record a call that ended without an access decision.

        The server interceptor awaits this before the status is sent. A failure
        to reach svc_authz is logged and does not change the call's status.
        """
        if decided_in_current_call():
            return
        request = pb.RecordAuditRequest(
            subject=subject_from_principal(outcome.principal),
            method=outcome.method,
            status_code=outcome.code.name,
            reason=outcome.reason,
            trace_id=outcome.trace_id,
        )
        try:
            await self._get_stub().RecordAudit(
                request, metadata=self._call_metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            # NOTE: the response is still sent. The missing record shows up
            # only in this error line, which names the trace id to reconcile.
            logger.error(
                "audit record for a call without decision was not written",
                extra={
                    "rpc_method": outcome.method,
                    "trace_id": outcome.trace_id,
                    "grpc_code": exc.code().name,
                },
            )

    async def close(self) -> None:
        """Close the channel this authorizer dialed."""
        if self._channel is not None:
            await self._channel.close()


def _unavailable(
    method: str, action: str, exc: grpc.aio.AioRpcError
) -> AuthzUnavailable:
    logger.warning(
        "authorization call failed",
        extra={"authz_method": method, "action": action, "grpc_code": exc.code().name},
    )
    return AuthzUnavailable(
        f"access decision for {action} failed: svc_authz answered "
        f"{exc.code().name} ({exc.details()}); access is denied until it "
        "answers, so retry later",
        reason="AUTHZ_UNAVAILABLE",
        metadata={"action": action},
    )
