"""Errors of svc_labs and the gRPC status each one maps to."""

from __future__ import annotations

from mesh.runtime.errors import (
    Aborted,
    FailedPrecondition,
    HinError,
    InvalidArgument,
    NotFound,
)


class LabsError(HinError):
    """Base of every error svc_labs raises on purpose."""


class OrderNotFound(LabsError, NotFound):
    """No order has the requested id."""


class ResultNotFound(LabsError, NotFound):
    """No result has the requested id."""


class UnmatchedNotFound(LabsError, NotFound):
    """No unmatched worklist item has the requested id."""


class StaleVersion(LabsError, Aborted):
    """The caller's expected_version is not the stored version."""


class TestNotOrdered(LabsError, FailedPrecondition):
    """A result names a test that its order does not contain."""


class ResultNotCritical(LabsError, FailedPrecondition):
    """Only critical results can be acknowledged."""


class ResultWithoutPatient(LabsError, FailedPrecondition):
    """The result waits in the unmatched worklist and has no patient yet."""


class AlreadyLinked(LabsError, FailedPrecondition):
    """The unmatched worklist item was already linked to a patient."""


class InvalidBundle(LabsError, InvalidArgument):
    """The FHIR bundle is not a JSON Bundle resource."""
