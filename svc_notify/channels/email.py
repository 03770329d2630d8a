"""E-mail over SMTP with the standard library's smtplib."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from svc_notify.channels import DeliveryError, OutgoingMessage


class SmtpSender:
    """Send each message as one plain-text e-mail through an SMTP relay.

    smtplib blocks, so every send runs on a worker thread with a socket
    timeout; a slow relay holds up only its own delivery.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        timeout: float,
        starttls: bool = False,
        username: str = "",
        password: str = "",
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._timeout = timeout
        self._starttls = starttls
        self._username = username
        self._password = password

    async def send(self, message: OutgoingMessage) -> None:
        """Send one e-mail; raise DeliveryError when the relay rejects it."""
        await asyncio.to_thread(self._send, self._compose(message))

    async def close(self) -> None:
        """Release nothing: each send opens its own connection."""

    def _compose(self, message: OutgoingMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self._sender
        email["To"] = message.address
        email["Subject"] = message.title
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = make_msgid(idstring=message.delivery_id)
        email["Content-Language"] = message.language
        email["X-HIN-Notification-Id"] = message.notification_id
        email.set_content(f"{message.summary}\n\n{message.footer}\n")
        return email

    def _send(self, email: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls()
                if self._username:
                    smtp.login(self._username, self._password)
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                "SMTP relay rejected the recipient address", permanent=True
            ) from exc
        except smtplib.SMTPResponseException as exc:
            # 5xx replies are permanent failures in SMTP; 4xx are transient.
            raise DeliveryError(
                f"SMTP relay replied {exc.smtp_code}",
                permanent=500 <= exc.smtp_code < 600,
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(
                f"SMTP relay {self._host}:{self._port} failed: {type(exc).__name__}"
            ) from exc
