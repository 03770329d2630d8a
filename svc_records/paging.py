"""Offset paging of list and search responses."""

from __future__ import annotations

import base64
import binascii

from hin.common.v1 import types_pb2
from mesh.runtime.validation import Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def parse_page(page: types_pb2.PageRequest, violations: Violations) -> tuple[int, int]:
    """Return (offset, size) of a request's page; record invalid fields."""
    if page.page_size < 0:
        violations.add("page.page_size", "must not be negative")
    size = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page.page_token:
        return 0, size
    try:
        offset = int(base64.urlsafe_b64decode(page.page_token.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        offset = -1
    if offset < 0:
        violations.add("page.page_token", "is not a token from a previous response")
    # NOTE: offset paging; a patient registered between two pages can shift
    # one row from one page to the next.
    return max(offset, 0), size


def page_response(offset: int, size: int, total: int) -> types_pb2.PageResponse:
    """Build the page response, with a next token unless this is the last page."""
    response = types_pb2.PageResponse(total_size=total)
    if offset + size < total:
        response.next_page_token = base64.urlsafe_b64encode(
            str(offset + size).encode()
        ).decode()
    return response
