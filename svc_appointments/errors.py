"""Errors of the scheduling context, each mapped to one gRPC status code."""

from __future__ import annotations

from mesh.runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    HinError,
    NotFound,
)


class AppointmentsError(HinError):
    """Base of every error svc_appointments raises on purpose."""


class PractitionerNotFound(AppointmentsError, NotFound):
    pass


class AppointmentNotFound(AppointmentsError, NotFound):
    pass


class AdmissionNotFound(AppointmentsError, NotFound):
    pass


class IdentifierInUse(AppointmentsError, AlreadyExists):
    """An identifier is already held by another practitioner or organization."""


class ScheduleMissing(AppointmentsError, FailedPrecondition):
    """The practitioner has no weekly schedule to book against."""


class SlotUnavailable(AppointmentsError, FailedPrecondition):
    """The requested time is outside the hours or already taken."""


class PatientUnknown(AppointmentsError, FailedPrecondition):
    """No PatientRegistered event has arrived for the patient id."""


class PatientMerged(AppointmentsError, FailedPrecondition):
    """The patient id was merged into a survivor; the metadata names it."""


class PatientDeceased(AppointmentsError, FailedPrecondition):
    pass


class InvalidTransition(AppointmentsError, FailedPrecondition):
    """The appointment or admission is not in a state that allows the call."""


class StaleVersion(AppointmentsError, Aborted):
    """``expected_version`` differs from the stored version."""


class IdempotencyKeyReused(AppointmentsError, FailedPrecondition):
    """The idempotency key was used before with a different request."""


class AlreadyAdmitted(AppointmentsError, FailedPrecondition):
    pass
