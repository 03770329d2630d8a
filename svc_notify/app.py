"""Composition root of svc_notify."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hin.notify.v1 import notify_service_pb2_grpc as pb_grpc
from mesh.runtime.server import BuildContext, ServiceSpec
from svc_notify.channels import Sender
from svc_notify.channels.email import SmtpSender
from svc_notify.channels.sms import HttpSmsProvider
from svc_notify.channels.webhook import WebhookSender
from svc_notify.config import NotifySettings
from svc_notify.delivery import DeliveryWorker
from svc_notify.dispatch import Dispatcher
from svc_notify.domain import policy
from svc_notify.escalation import EscalationScanner
from svc_notify.feed import Wakeups
from svc_notify.handlers import EventHandlers
from svc_notify.servicer import NotifyServicer
from svc_notify.tables import NotifyBase

logger = logging.getLogger(__name__)

SERVICE_NAME = "hin.notify.v1.NotifyService"


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def build_senders(settings: NotifySettings) -> dict[int, Sender]:
    """Create a sender for each configured external channel.

    E-mail needs HIN_NOTIFY_SMTP_HOST and SMS needs HIN_NOTIFY_SMS_URL; a
    delivery over a channel without a sender is logged as skipped.
    """
    senders: dict[int, Sender] = {
        policy.WEBHOOK: WebhookSender(timeout=settings.send_timeout_seconds)
    }
    if settings.smtp_host:
        senders[policy.EMAIL] = SmtpSender(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            timeout=settings.send_timeout_seconds,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
        )
    if settings.sms_url:
        senders[policy.SMS] = HttpSmsProvider(
            url=settings.sms_url,
            timeout=settings.send_timeout_seconds,
            token=settings.sms_token,
        )
    return senders


def build(
    ctx: BuildContext,
    *,
    senders: dict[int, Sender] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> ServiceSpec:
    """Wire the servicer, the event handlers and the background tasks.

    Args:
        ctx: collaborators from the service host.
        senders: channel -> sender; defaults to the configured SMTP relay, SMS
            provider and webhook sender.
        clock: source of the current time.
    """
    settings = NotifySettings.from_service_settings(ctx.settings)
    wakeups = Wakeups()
    senders = build_senders(settings) if senders is None else senders
    servicer = NotifyServicer(
        db=ctx.db,
        authorizer=ctx.authorizer,
        wakeups=wakeups,
        poll_seconds=settings.poll_seconds,
        clock=clock,
        allow_private_webhooks=settings.webhook_allow_private,
    )
    handlers = EventHandlers(
        outbox=ctx.outbox,
        escalation_delay=timedelta(seconds=settings.escalation_seconds),
        wakeups=wakeups,
        clock=clock,
    )
    dispatcher = Dispatcher(
        db=ctx.db,
        authorizer=ctx.authorizer,
        settings=settings,
        wakeups=wakeups,
        clock=clock,
    )
    worker = DeliveryWorker(
        db=ctx.db,
        outbox=ctx.outbox,
        settings=settings,
        senders=senders,
        wakeups=wakeups,
        clock=clock,
    )
    scanner = EscalationScanner(
        db=ctx.db,
        outbox=ctx.outbox,
        delay=timedelta(seconds=settings.escalation_seconds),
        poll_seconds=settings.poll_seconds,
        wakeups=wakeups,
        clock=clock,
    )
    logger.info(
        "notify configured",
        extra={
            "channels": sorted(senders),
            "escalation_seconds": settings.escalation_seconds,
        },
    )
    return ServiceSpec(
        name="notify",
        register=[(pb_grpc.add_NotifyServiceServicer_to_server, servicer)],
        service_names=[SERVICE_NAME],
        migrations="svc_notify:migrations",
        metadata=NotifyBase.metadata,
        handlers=handlers.handlers(),
        background=[dispatcher.run, worker.run, scanner.run],
        on_stop=[worker.close],
    )
