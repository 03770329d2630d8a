"""Settings of svc_notify, read from ``HIN_NOTIFY_*`` variables.

- ``HIN_NOTIFY_ESCALATION_SECONDS``: time a critical result waits for an
  acknowledgment before the next person is notified (default 300).
- ``HIN_NOTIFY_SMTP_HOST`` and ``HIN_NOTIFY_SMTP_PORT``: SMTP relay for
  e-mail (default unset and 25); without a host, e-mail deliveries are
  logged as skipped.
- ``HIN_NOTIFY_SMTP_FROM``: sender address (default notifications@hin.local).
- ``HIN_NOTIFY_SMTP_STARTTLS``: ``true`` to require STARTTLS (default false).
- ``HIN_NOTIFY_SMTP_USERNAME`` and ``HIN_NOTIFY_SMTP_PASSWORD``: SMTP login,
  when the relay needs one (default unset).
- ``HIN_NOTIFY_SMS_URL``: HTTP endpoint of the SMS provider; without it, SMS
  deliveries are logged as skipped (default unset).
- ``HIN_NOTIFY_SMS_TOKEN``: bearer token sent to the SMS provider (default
  unset).
- ``HIN_NOTIFY_MAX_ATTEMPTS``: attempts per external delivery before it is
  failed (default 6).
- ``HIN_NOTIFY_RETRY_BASE_SECONDS``: first retry delay, doubled after each
  failed attempt up to one hour (default 2).
- ``HIN_NOTIFY_SEND_TIMEOUT_SECONDS``: timeout of one SMTP, SMS or webhook
  call (default 10).
- ``HIN_NOTIFY_POLL_SECONDS``: interval of the background scans when nothing
  wakes them (default 1).
- ``HIN_NOTIFY_DEFAULT_LANGUAGE``: language of recipients without
  preferences, ``en`` or ``ar`` (default en).
- ``HIN_NOTIFY_WEBHOOK_ALLOW_PRIVATE``: ``true`` to accept webhook URLs on
  loopback, private and link-local addresses, for local receivers and tests
  (default false, so a recipient cannot aim deliveries at internal hosts).
- ``HIN_NOTIFY_DEFAULT_TIME_ZONE``: IANA zone of times in messages and of
  quiet hours when the recipient set none (default UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mesh.runtime.settings import ServiceSettings, SettingsError

LANGUAGES = ("en", "ar")


@dataclass(frozen=True)
class NotifySettings:
    """Typed ``HIN_NOTIFY_*`` settings of one svc_notify process."""

    escalation_seconds: float = 300.0
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "notifications@hin.local"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    sms_url: str = ""
    sms_token: str = ""
    max_attempts: int = 6
    retry_base_seconds: float = 2.0
    send_timeout_seconds: float = 10.0
    poll_seconds: float = 1.0
    default_language: str = "en"
    default_time_zone: str = "UTC"
    #: Accept webhook URLs on loopback, private and link-local addresses.
    webhook_allow_private: bool = False

    @classmethod
    def from_service_settings(cls, settings: ServiceSettings) -> NotifySettings:
        """Read and validate the settings; raise SettingsError naming the variable."""
        get = settings.service_setting
        language = get("default_language", "en")
        if language not in LANGUAGES:
            raise SettingsError(
                f"HIN_NOTIFY_DEFAULT_LANGUAGE={language!r} is not supported; "
                f"use one of {', '.join(LANGUAGES)}"
            )
        zone = get("default_time_zone", "UTC")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(
                f"HIN_NOTIFY_DEFAULT_TIME_ZONE={zone!r} is not an IANA time zone"
            ) from None
        return cls(
            escalation_seconds=_positive(
                get("escalation_seconds", "300"), "ESCALATION_SECONDS"
            ),
            smtp_host=get("smtp_host"),
            smtp_port=int(_positive(get("smtp_port", "25"), "SMTP_PORT")),
            smtp_from=get("smtp_from", "notifications@hin.local"),
            smtp_starttls=_flag(get("smtp_starttls", "false"), "SMTP_STARTTLS"),
            smtp_username=get("smtp_username"),
            smtp_password=get("smtp_password"),
            sms_url=get("sms_url"),
            sms_token=get("sms_token"),
            max_attempts=int(_positive(get("max_attempts", "6"), "MAX_ATTEMPTS")),
            retry_base_seconds=_positive(
                get("retry_base_seconds", "2"), "RETRY_BASE_SECONDS"
            ),
            send_timeout_seconds=_positive(
                get("send_timeout_seconds", "10"), "SEND_TIMEOUT_SECONDS"
            ),
            poll_seconds=_positive(get("poll_seconds", "1"), "POLL_SECONDS"),
            default_language=language,
            default_time_zone=zone,
            webhook_allow_private=_flag(
                get("webhook_allow_private", "false"), "WEBHOOK_ALLOW_PRIVATE"
            ),
        )


def _positive(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"HIN_NOTIFY_{name}={text!r} is not a number") from None
    if value <= 0:
        raise SettingsError(f"HIN_NOTIFY_{name}={text!r} must be positive")
    return value


def _flag(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes"}:
        return True
    if lowered in {"0", "false", "no", ""}:
        return False
    raise SettingsError(f"HIN_NOTIFY_{name}={text!r} is not true or false")
