"""Request checks shared by the billing servicer's methods."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from hin.common.v1 import types_pb2 as types
from mesh.runtime.validation import Violations
from svc_billing import convert

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")


def check_page(v: Violations, page: types.PageRequest) -> tuple[int, int]:
    """Validate paging; return the offset and the page size."""
    if page.page_size < 0:
        v.add("page.page_size", "must be zero or more")
    size = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    offset = 0
    if page.page_token:
        if not page.page_token.isdigit():
            v.add("page.page_token", "is not a token from a previous response")
        else:
            offset = int(page.page_token)
    return offset, max(size, 1)


def page_response(
    items: Sequence[object], offset: int, size: int
) -> types.PageResponse:
    next_token = str(offset + size) if offset + size < len(items) else ""
    return types.PageResponse(next_page_token=next_token, total_size=len(items))


def check_coding(v: Violations, coding: types.Coding, field: str) -> None:
    v.require(coding.system, f"{field}.system")
    v.require(coding.code, f"{field}.code")


#: Largest amount accepted on any one price, charge or payment. With at most
#: 10,000 units per charge the total stays far inside a signed 64-bit integer.
MAX_MINOR_UNITS = 1_000_000_000_000


def check_money(
    v: Violations, money: types.Money, field: str, *, required: bool = False
) -> None:
    """Check a currency code and a non-negative amount."""
    if not CURRENCY_PATTERN.match(money.currency):
        if money.currency or required:
            v.add(f"{field}.currency", "must be an ISO 4217 code such as EGP")
    if money.minor_units < 0:
        v.add(f"{field}.minor_units", "must be zero or more")
    elif money.minor_units > MAX_MINOR_UNITS:
        v.add(
            f"{field}.minor_units",
            f"must be at most {MAX_MINOR_UNITS} (10 billion in major units)",
        )


def check_date(v: Violations, value: types.Date, field: str) -> dt.date | None:
    try:
        return convert.to_date(value)
    except ValueError:
        v.add(field, "must be a real calendar date (year, month, day)")
        return None
