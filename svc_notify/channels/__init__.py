"""Senders of the external channels: e-mail, SMS and webhooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    """One delivery, ready for a sender."""

    delivery_id: str
    notification_id: str
    #: E-mail address, E.164 phone number or webhook URL.
    address: str
    language: str
    title: str
    #: Text without clinical detail, for channels that leave the network.
    summary: str
    #: Closing line with the notification reference, in the message language.
    footer: str
    #: JSON document of the whole notification, for webhooks.
    payload: Mapping[str, object] = field(default_factory=dict)
    #: Webhook signing secret; empty for other channels.
    secret: str = ""


class DeliveryError(Exception):
    """A send failed; ``permanent`` is True when a retry cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    """Sends one message over one channel; raises DeliveryError on failure."""

    async def send(self, message: OutgoingMessage) -> None: ...

    async def close(self) -> None: ...


def is_permanent_http_status(status: int) -> bool:
    """Tell whether an HTTP error status means that retrying cannot help."""
    return 400 <= status < 500 and status not in (408, 425, 429)
