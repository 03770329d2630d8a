"""Local receivers for the demo's e-mail and SMS deliveries.

The demo points svc_notify at a real SMTP server (aiosmtpd) and at a local
HTTP endpoint standing in for an SMS gateway, so every channel delivers
something that can be counted on the receiving side.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


class MailCatcher:
    """SMTP server on a loopback port that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.port = _free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(
                {"from": envelope.mail_from, "to": list(envelope.rcpt_tos)}
            )
        return "250 Message accepted for delivery"

    def start(self) -> int:
        """Start serving and return the port."""
        self._controller.start()
        return self.port

    def stop(self) -> None:
        self._controller.stop()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.messages)


class SmsCatcher:
    """HTTP endpoint that accepts the SMS provider's JSON posts."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                try:
                    catcher.messages.append(json.loads(body))
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                self.send_response(202)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> str:
        """Start serving and return the URL to post to."""
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/sms"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def count(self) -> int:
        return len(self.messages)


def _free_port() -> int:
    # aiosmtpd's controller checks its port by connecting to it, so it needs
    # a real port number up front rather than 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
