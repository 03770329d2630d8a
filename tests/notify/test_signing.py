"""Webhook signatures: what a receiver accepts and rejects."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from svc_notify.signing import (
    WebhookSignatureError,
    sign_webhook,
    verify_webhook,
)

SECRET = "s3cret-for-tests-0123456789"
BODY = b'{"notification_id":"n-1"}'
SENT_AT = 1_780_000_000


def expected_digest(secret: str, body: bytes, timestamp: int) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_signature_header_format() -> None:
    header = sign_webhook(SECRET, BODY, SENT_AT)
    assert header == f"t={SENT_AT},v1={expected_digest(SECRET, BODY, SENT_AT)}"


def test_valid_signature_accepted() -> None:
    headers = {"x-hin-signature": sign_webhook(SECRET, BODY, SENT_AT)}
    assert verify_webhook(SECRET, headers, BODY, now=SENT_AT + 10) == SENT_AT


def test_tampered_body_rejected() -> None:
    headers = {"X-HIN-Signature": sign_webhook(SECRET, BODY, SENT_AT)}
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_webhook(SECRET, headers, BODY + b" ", now=SENT_AT)


def test_wrong_secret_rejected() -> None:
    headers = {"X-HIN-Signature": sign_webhook(SECRET, BODY, SENT_AT)}
    with pytest.raises(WebhookSignatureError):
        verify_webhook("another-secret-value", headers, BODY, now=SENT_AT)


def test_old_timestamp_rejected() -> None:
    headers = {"X-HIN-Signature": sign_webhook(SECRET, BODY, SENT_AT)}
    with pytest.raises(WebhookSignatureError, match="away from"):
        verify_webhook(SECRET, headers, BODY, tolerance=300, now=SENT_AT + 301)


def test_rotated_secret_second_signature_accepted() -> None:
    old = expected_digest("old-secret-value-000", BODY, SENT_AT)
    new = expected_digest(SECRET, BODY, SENT_AT)
    headers = {"X-HIN-Signature": f"t={SENT_AT},v1={old},v1={new}"}
    assert verify_webhook(SECRET, headers, BODY, now=SENT_AT) == SENT_AT


@pytest.mark.parametrize("header", ["", "v1=abc", f"t={SENT_AT}", "t=soon,v1=abc"])
def test_malformed_header_rejected(header: str) -> None:
    headers = {"X-HIN-Signature": header} if header else {}
    with pytest.raises(WebhookSignatureError):
        verify_webhook(SECRET, headers, BODY, now=SENT_AT)
