"""Errors billing raises on purpose, each mapped to one gRPC status code."""

from __future__ import annotations

from mesh.runtime.errors import (
    Aborted,
    FailedPrecondition,
    HinError,
    InvalidArgument,
    NotFound,
)


class BillingError(HinError):
    """Base of every billing error."""


class ChargeNotFound(BillingError, NotFound):
    pass


class InvoiceNotFound(BillingError, NotFound):
    pass


class ClaimNotFound(BillingError, NotFound):
    pass


class PolicyNotFound(BillingError, NotFound):
    pass


class StaleVersion(BillingError, Aborted):
    """The caller's expected_version is not the stored version."""


class InvalidState(BillingError, FailedPrecondition):
    """The object's status does not allow the requested change."""


class IdempotencyKeyReused(BillingError, FailedPrecondition):
    """The idempotency key was first used for a different request."""


class UnpricedService(BillingError, InvalidArgument):
    """No price list entry for a code on the service date."""


class InvalidPayment(BillingError, InvalidArgument):
    """A payment does not fit the invoice it names."""


class InvalidFhirResource(BillingError, InvalidArgument):
    """A FHIR resource lacks a field billing needs."""


def check_version(kind: str, object_id: str, stored: int, expected: int) -> None:
    """Raise StaleVersion when ``expected`` is set and differs from ``stored``."""
    if expected and expected != stored:
        raise StaleVersion(
            f"{kind} {object_id} is at version {stored}, the request expected "
            f"version {expected}; read it again and retry with its version",
            reason="STALE_VERSION",
            metadata={"id": object_id, "version": str(stored)},
        )
