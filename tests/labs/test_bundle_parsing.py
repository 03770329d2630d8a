"""Bundles that are not JSON a parser can read are INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from mesh.runtime.errors import InvalidArgument
from svc_labs.fhir import _parse_bundle

DEEPLY_NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("data", [DEEPLY_NESTED, b"{nope", b"\xff"])
def test_unreadable_bundle_is_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        _parse_bundle(data)
