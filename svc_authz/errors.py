"""Errors of the authz context; each maps to one gRPC status code."""

from __future__ import annotations

from mesh.runtime.errors import (
    FailedPrecondition,
    HinError,
    NotFound,
    PermissionDenied,
)


class AuthzError(HinError):
    """Base of every error the authz service raises on purpose."""


class CallerNotService(AuthzError, PermissionDenied):
    """A decision method was called by something other than a service."""


class AccessNotPermitted(AuthzError, PermissionDenied):
    """The caller may not use this authz method for this patient."""


class ConsentNotFound(AuthzError, NotFound):
    """No consent has the requested id."""


class PatientNotKnown(AuthzError, FailedPrecondition):
    """The patient has not been registered with svc_authz yet."""
