"""Error tree shared by every service, and its mapping to gRPC status codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "hin.local"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (``identifiers[0].value``) and why."""

    field: str
    description: str


class HinError(Exception):
    """Base of every error a service raises on purpose.

    A context defines its own subclass, and each condition a caller handles
    differently derives from it and from one of the code classes below.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: True when repeating the same call later can succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = tuple(violations)
        self.reason = reason or type(self).__name__
        self.metadata = dict(metadata or {})

    def to_status(self) -> status_pb2.Status:
        """Build the google.rpc.Status, with BadRequest and ErrorInfo details."""
        status = status_pb2.Status(code=_RPC_CODES[self.code], message=self.message)
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        status.details.append(_pack(info))
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            status.details.append(_pack(bad_request))
        return status


class InvalidArgument(HinError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(HinError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(HinError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(HinError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(HinError):
    code = grpc.StatusCode.ABORTED
    retryable = True


class PermissionDenied(HinError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(HinError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(HinError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(HinError):
    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


def _pack(
    message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


_RPC_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}
