"""Parse HL7 v2 DTM/TS values into aware datetimes.

A value without a UTC offset is local time at the sending facility. The
caller passes that facility's zone, so such a value is never read as UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

_DTM = re.compile(
    r"^(?P<year>\d{4})(?P<month>\d{2})?(?P<day>\d{2})?(?P<hour>\d{2})?"
    r"(?P<minute>\d{2})?(?P<second>\d{2})?(?:\.(?P<fraction>\d{1,4}))?"
    r"(?P<offset>[+-]\d{4})?$"
)


class TimestampError(ValueError):
    """A DTM value is not YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]."""


def parse_timestamp(text: str, zone: ZoneInfo) -> datetime:
    """Parse a DTM value; local values are read in ``zone``.

    Missing month and day default to the first, missing time parts to zero.

    Raises:
        TimestampError: the value does not have the DTM form or names an
            impossible date, time or offset.
    """
    match = _DTM.match(text.strip())
    if match is None:
        raise TimestampError(
            "expected a timestamp YYYYMMDDHHMMSS with an optional +/-ZZZZ offset"
        )
    parts = match.groupdict()
    fraction = parts["fraction"] or ""
    try:
        local = datetime(
            int(parts["year"]),
            int(parts["month"] or 1),
            int(parts["day"] or 1),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
        )
    except ValueError as exc:
        raise TimestampError(
            f"expected a valid calendar date and time ({exc})"
        ) from None
    offset = parts["offset"]
    if offset is None:
        return local.replace(tzinfo=zone)
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 14 or minutes > 59:
        raise TimestampError("expected a UTC offset between -1400 and +1400")
    delta = timedelta(hours=hours, minutes=minutes)
    return local.replace(tzinfo=timezone(delta if offset[0] == "+" else -delta))
