"""Errors of the records context; each maps to one gRPC status code."""

from __future__ import annotations

from mesh.runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    HinError,
    NotFound,
)


class RecordsError(HinError):
    """Base of every error the records service raises on purpose."""


class PatientNotFound(RecordsError, NotFound):
    """No patient has the requested id."""


class IdentifierTaken(RecordsError, AlreadyExists):
    """An identifier of the request is held by another patient."""


class StaleVersion(RecordsError, Aborted):
    """The caller's expected_version is not the record's current version."""


class MergeRejected(RecordsError, FailedPrecondition):
    """The two records cannot be merged in their current state."""


class PatientMerged(RecordsError, FailedPrecondition):
    """A write names a patient id that was merged into another record."""


class ConcurrentChange(RecordsError, Aborted):
    """Another transaction wrote the same rows first; retrying can succeed."""
