"""SMS through a provider interface; the default posts JSON to an HTTP endpoint."""

from __future__ import annotations

import httpx

from svc_notify.channels import DeliveryError, OutgoingMessage, is_permanent_http_status


class HttpSmsProvider:
    """Post ``{"to", "text", "reference"}`` as JSON to the provider's URL.

    Gateways that want another shape get their own class with the same
    ``send`` and ``close`` methods.
    """

    def __init__(
        self,
        *,
        url: str,
        timeout: float,
        token: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._url = url
        self._client = httpx.AsyncClient(
            timeout=timeout, headers=headers, transport=transport
        )

    async def send(self, message: OutgoingMessage) -> None:
        """Send one text message; raise DeliveryError on any non-2xx reply."""
        body = {
            "to": message.address,
            "text": f"{message.title}: {message.summary} {message.footer}",
            "reference": message.delivery_id,
        }
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SMS provider failed: {type(exc).__name__}") from exc
        if not response.is_success:
            raise DeliveryError(
                f"SMS provider replied HTTP {response.status_code}",
                permanent=is_permanent_http_status(response.status_code),
            )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()
