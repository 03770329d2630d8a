"""Quiet hours: a daily window in the recipient's zone with no routine messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class QuietWindow:
    """Daily window from ``start`` to ``end`` local time; it may span midnight."""

    start: time
    end: time
    zone: ZoneInfo

    def end_if_quiet(self, now: datetime) -> datetime | None:
        """Return when the window ends, in UTC, if ``now`` is inside it, else None.

        A window whose start equals its end is empty. ``now`` must be aware.
        """
        if self.start == self.end:
            return None
        local = now.astimezone(self.zone)
        today = local.date()
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= clock < self.end
            end_day = today
        else:
            # The window spans midnight: 22:00-06:00 covers 22:00..24:00 of one
            # day and 00:00..06:00 of the next.
            inside = clock >= self.start or clock < self.end
            end_day = today + timedelta(days=1) if clock >= self.start else today
        if not inside:
            return None
        local_end = datetime.combine(end_day, self.end, tzinfo=self.zone)
        return local_end.astimezone(UTC)
