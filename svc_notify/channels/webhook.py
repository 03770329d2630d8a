"""Webhooks: a signed HTTP POST of the notification as JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx

from svc_notify.channels import DeliveryError, OutgoingMessage, is_permanent_http_status
from svc_notify.signing import SIGNATURE_HEADER, sign_webhook


class WebhookSender:
    """POST each notification to the recipient's URL with an HMAC signature.

    Redirects are not followed, so a signed body never goes to a URL the
    recipient did not register.
    """

    def __init__(
        self,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout, transport=transport, follow_redirects=False
        )
        self._clock = clock

    async def send(self, message: OutgoingMessage) -> None:
        """Send one webhook; raise DeliveryError on any non-2xx reply."""
        if not message.secret:
            raise DeliveryError("webhook has no signing secret", permanent=True)
        body = json.dumps(message.payload, ensure_ascii=False, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_webhook(message.secret, body, int(self._clock())),
            "X-HIN-Delivery-Id": message.delivery_id,
            "X-HIN-Notification-Id": message.notification_id,
        }
        try:
            response = await self._client.post(
                message.address, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook POST failed: {type(exc).__name__}") from exc
        if not response.is_success:
            raise DeliveryError(
                f"webhook receiver replied HTTP {response.status_code}",
                permanent=is_permanent_http_status(response.status_code),
            )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()
