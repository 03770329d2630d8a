"""In-process wake-ups: tell waiting tasks that new rows were committed.

Wake-ups only shorten waits. Every waiter also polls the database, so a
missed wake-up, or a row written by another replica, costs at most one poll
interval.
"""

from __future__ import annotations

import asyncio
import threading

DISPATCH = "dispatch"
DELIVER = "deliver"


def stream_key(recipient: str) -> str:
    """Return the wake-up key of a recipient's in-app stream."""
    return f"stream:{recipient}"


class Wakeups:
    """Named asyncio events that any thread may set."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}
        self._lock = threading.Lock()

    def waiter(self, key: str) -> asyncio.Event:
        """Return the event that the next ``notify(key)`` sets.

        Take the waiter before reading the database: a commit that lands
        between the read and the wait then still sets the event.
        Call this on the event loop only.
        """
        with self._lock:
            self._loop = asyncio.get_running_loop()
            event = self._events.get(key)
            if event is None:
                event = self._events[key] = asyncio.Event()
            return event

    def notify(self, *keys: str) -> None:
        """Set the events of ``keys``; safe to call from any thread."""
        with self._lock:
            loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._set(keys)
        else:
            loop.call_soon_threadsafe(self._set, keys)

    def _set(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            events = [self._events.pop(key, None) for key in keys]
        for event in events:
            if event is not None:
                event.set()


async def wait_for(event: asyncio.Event, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until ``event`` is set or ``timeout`` seconds passed."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
