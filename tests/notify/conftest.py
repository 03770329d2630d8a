"""Fixtures of the svc_notify tests: clock, SMTP and HTTP receivers, hosts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from google.protobuf.message import Message
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData

from mesh.network.devkeys import mint_token
from mesh.runtime.authz import Decision, RolePolicyAuthorizer
from mesh.runtime.events import Outbox, OutboxRelay, add_event_tables, producer_config
from mesh.runtime.principal import Principal
from mesh.runtime.server import BuildContext, ServiceHost, ServiceSpec
from mesh.runtime.settings import ServiceSettings
from mesh.runtime.storage import Database
from svc_notify.app import build

PERMISSIONS = {
    "doctor": {"notify.notification.read", "notify.notification.write"},
    "patient": {"notify.notification.read", "notify.notification.write"},
    "privacy_officer": {"notify.notification.read", "notify.notification.write"},
    "on_call": {"notify.notification.read"},
    "administrator": {
        "notify.notification.read",
        "notify.notification.write",
        "notify.admin.read",
        "notify.admin.write",
    },
}


class SteppedClock:
    """Wall clock that a test can move forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class ConsentAuthorizer:
    """Role permissions, plus a list of (recipient subject, patient) denials."""

    def __init__(self) -> None:
        self._roles = RolePolicyAuthorizer(PERMISSIONS)
        self.denied: set[tuple[str, str]] = set()

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = 1,
        organization_id: str = "",
    ) -> Decision:
        if (principal.subject, patient_id) in self.denied:
            return Decision(False, "no care relationship with the patient")
        return await self._roles.check(
            principal,
            action=action,
            patient_id=patient_id,
            purpose=purpose,
            organization_id=organization_id,
        )


@dataclass
class SmtpInbox:
    """Messages received by a real aiosmtpd server."""

    messages: list[Any] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def smtp_inbox() -> Iterator[SmtpInbox]:
    """Real SMTP server on a free loopback port."""
    inbox = SmtpInbox()
    # The controller connects to its own port to see that it is up, so it
    # needs a real port number rather than 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        inbox.port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    yield inbox
    controller.stop()


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


class HttpReceiver:
    """Real HTTP server on a loopback port that records POSTs.

    ``statuses`` maps a path to the status codes of its next replies. When
    the list is empty the server replies 204.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.statuses: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        ReceivedRequest(self.path, dict(self.headers), body)
                    )
                    queued = receiver.statuses.get(self.path, [])
                    status = queued.pop(0) if queued else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def http_receiver() -> Iterator[HttpReceiver]:
    """Real HTTP server for webhooks and the SMS provider."""
    receiver = HttpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@dataclass
class NotifyNetwork:
    """A running svc_notify with its collaborators."""

    host: ServiceHost
    port: int
    state: Path
    clock: SteppedClock
    authorizer: ConsentAuthorizer
    org: str

    def token(self, *, roles: list[str], **claims: str) -> str:
        return mint_token(
            self.state,
            subject=claims.pop("subject", f"user-{uuid.uuid4().hex[:6]}"),
            roles=roles,
            organization_id=claims.pop("organization_id", self.org),
            **claims,
        )

    def metadata(self, *, roles: list[str], **claims: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token(roles=roles, **claims)}"),)


def notify_settings(
    state: Path, bootstrap: str, database_url: str, extra: dict[str, str]
) -> ServiceSettings:
    mint_token(state, subject="setup", roles=["doctor"], organization_id="setup")
    return ServiceSettings.from_env(
        "notify",
        environ={
            "HIN_STATE_DIR": str(state),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HIN_GRPC_ADDRESS": "127.0.0.1:0",
            "HIN_DATABASE_URL": database_url,
            "HIN_NOTIFY_POLL_SECONDS": "0.2",
            # Webhook receivers in these tests listen on loopback.
            "HIN_NOTIFY_WEBHOOK_ALLOW_PRIVATE": "true",
            "HIN_NOTIFY_EVENT_MAX_ATTEMPTS": "2",
            "HIN_NOTIFY_EVENT_BACKOFF_SECONDS": "0.05",
            **extra,
        },
    )


async def start_notify(
    state: Path,
    bootstrap: str,
    *,
    database_url: str,
    extra: dict[str, str],
    clock: SteppedClock,
    authorizer: ConsentAuthorizer,
) -> tuple[ServiceHost, int]:
    """Start svc_notify on a loopback port with an injected clock."""

    def build_with_clock(ctx: BuildContext) -> ServiceSpec:
        return build(ctx, clock=clock)

    host = ServiceHost(
        settings=notify_settings(state, bootstrap, database_url, extra),
        build=build_with_clock,
        authorizer=authorizer,
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    return host, port


class UpstreamPublisher:
    """Another context's outbox and relay, publishing events to the broker."""

    def __init__(self, *, service: str, bootstrap: str, database_url: str) -> None:
        metadata = MetaData()
        add_event_tables(metadata)
        self.db = Database(database_url)
        self.db.create_all(metadata)
        self.outbox = Outbox(service=service)
        self.relay = OutboxRelay(
            db=self.db,
            outbox=self.outbox,
            producer_config=producer_config(
                bootstrap=bootstrap,
                client_id=f"test-{service}",
                extra={},
                delivery_timeout=10.0,
            ),
            tracer_provider=TracerProvider(),
        )

    async def publish(self, *events: tuple[Message, str]) -> list[str]:
        """Publish (event, key) pairs in order; return their event ids."""

        def write() -> list[str]:
            with self.db.transaction() as session:
                return [self.outbox.add(session, e, key=k) for e, k in events]

        ids = await asyncio.to_thread(write)
        flushed = await asyncio.to_thread(self.relay.flush, 15.0)
        assert flushed, "the upstream relay did not publish within 15 s"
        return ids

    def close(self) -> None:
        self.db.dispose()


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 20.0
) -> Any:
    """Return the first truthy result of ``probe``; fail after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.1)


def json_body(request: ReceivedRequest) -> Any:
    return json.loads(request.body)
