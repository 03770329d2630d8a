"""Bundles that are not JSON a parser can read are FhirError, not a crash."""

from __future__ import annotations

import pytest

from svc_records.domain.fhir import FhirError, read_bundle

DEEPLY_NESTED = b"[" * 100_000 + b"]" * 100_000
HUGE_INTEGER = (
    b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": '
    b'"Patient", "multipleBirthInteger": ' + b"9" * 5000 + b"}}]}"
)


@pytest.mark.parametrize("data", [DEEPLY_NESTED, HUGE_INTEGER, b"{nope", b"\xff"])
def test_unreadable_bundle_is_fhir_error(data: bytes) -> None:
    with pytest.raises(FhirError):
        read_bundle(data)
