"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``.

Every webhook POST carries the header ``X-HIN-Signature: t=<unix>,v1=<hex>``.
Receivers check it with :func:`verify_webhook`, which needs only the standard
library::

    from svc_notify.signing import verify_webhook, WebhookSignatureError

    try:
        verify_webhook(secret, request.headers, raw_body, tolerance=300)
    except WebhookSignatureError:
        return 400

The timestamp is signed together with the body, so a captured request cannot
be replayed after ``tolerance`` seconds. During a secret rotation the header
may carry several ``v1`` entries; one match is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-HIN-Signature"
SCHEME = "v1"


class WebhookSignatureError(ValueError):
    """A webhook request is unsigned, wrongly signed, or too old."""


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """Return the ``X-HIN-Signature`` header value for ``body`` sent at ``timestamp``.

    Args:
        secret: shared secret of the receiving endpoint.
        body: exact bytes of the HTTP request body.
        timestamp: Unix time in seconds at which the request is sent.
    """
    return f"t={timestamp},{SCHEME}={_digest(secret, body, timestamp)}"


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300.0,
    *,
    now: float | None = None,
) -> int:
    """Check the signature of a received webhook and return its timestamp.

    Args:
        secret: shared secret configured for this endpoint.
        headers: request headers; the lookup ignores case.
        body: raw request body, before any JSON parsing.
        tolerance: maximum age, and maximum clock skew into the future, of the
            signed timestamp, in seconds.
        now: current Unix time; defaults to ``time.time()``.

    Raises:
        WebhookSignatureError: when the header is missing or malformed, the
            timestamp is outside the tolerance, or no signature matches.
    """
    header = _header(headers, SIGNATURE_HEADER)
    if header is None:
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"signature timestamp {timestamp} is more than {tolerance:g} s away "
            f"from the receiver's clock ({int(current)}); check both clocks or "
            "reject the replayed request"
        )
    expected = _digest(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise WebhookSignatureError(
            "signature does not match the body; the body was changed or the "
            "secret differs"
        )
    return timestamp


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookSignatureError(
                    f"timestamp {value!r} in {SIGNATURE_HEADER} is not an integer"
                ) from None
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError(
            f"{SIGNATURE_HEADER} must look like t=<unix seconds>,v1=<hex digest>"
        )
    return timestamp, signatures
