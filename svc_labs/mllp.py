"""MLLP listener: HL7 v2 messages over TCP, each framed 0x0B ... 0x1C 0x0D.

A connection may carry many messages; each gets its ACK on the same
connection before the next one is read. The listener has no caller identity:
it listens on loopback only, and a lab system reaches it through a
network-level tunnel or proxy that decides who may connect.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from svc_labs.hl7v2 import ack
from svc_labs.hl7v2.errors import (
    CODE_APPLICATION_INTERNAL_ERROR,
    CODE_DATA_TYPE_ERROR,
    Hl7Error,
)
from svc_labs.hl7v2.messages import Header
from svc_labs.publishing import new_id
from svc_labs.store import now_utc

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

MessageHandler = Callable[[bytes], Awaitable[bytes]]


@dataclass(frozen=True)
class MllpOptions:
    """Limits of the listener."""

    host: str = "127.0.0.1"
    port: int = 2575
    #: Largest accepted frame; a larger one gets AR and the connection closes.
    max_frame_bytes: int = 1024 * 1024
    #: Time a connection may stay silent between messages before it is closed.
    idle_timeout_seconds: float = 300.0
    #: Time a started frame may take to arrive completely; a client that
    #: stalls mid-frame is disconnected.
    frame_timeout_seconds: float = 30.0


class FrameTooLarge(Exception):
    """A frame exceeded the configured maximum size."""


class MllpListener:
    """Accept MLLP connections and acknowledge each framed message."""

    def __init__(self, *, options: MllpOptions, handler: MessageHandler) -> None:
        self._options = options
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._socket: socket.socket | None = None
        self.port = 0
        self._connections: set[asyncio.Task[None]] = set()

    def bind(self) -> int:
        """Bind the listening socket now and return its port.

        Binding before the service reports SERVING makes a taken port fail
        the start instead of a background task.
        """
        if self._socket is None:
            family = socket.AF_INET6 if ":" in self._options.host else socket.AF_INET
            listening = socket.socket(family, socket.SOCK_STREAM)
            try:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listening.bind((self._options.host, self._options.port))
                listening.listen(128)
            except OSError:
                listening.close()
                raise
            listening.setblocking(False)
            self._socket = listening
            self.port = listening.getsockname()[1]
        return self.port

    async def start(self) -> int:
        """Start accepting connections and return the bound port."""
        self.bind()
        self._server = await asyncio.start_server(
            self._serve_connection,
            sock=self._socket,
            limit=self._options.max_frame_bytes + 1024,
        )
        logger.info("MLLP listener started", extra={"port": self.port})
        return self.port

    async def run(self) -> None:
        """Serve until cancelled; the coroutine ServiceSpec.background runs."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop accepting, close open connections and wait for them."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self._socket = None
        logger.info("MLLP listener stopped")

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                frame = await self._read_frame(reader)
                if frame is None:
                    break
                writer.write(START_BLOCK + await self._answer(frame) + END_BLOCK)
                await writer.drain()
        except FrameTooLarge as exc:
            logger.warning(
                "MLLP input over the frame size limit; connection closed",
                extra={"max_frame_bytes": self._options.max_frame_bytes},
            )
            writer.write(START_BLOCK + self._too_large_ack(str(exc)) + END_BLOCK)
            await _drain_quietly(writer)
        except TimeoutError:
            logger.info("MLLP connection timed out; closed")
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.info("MLLP connection closed by the peer")
        finally:
            self._connections.discard(task)
            writer.close()
            await _close_quietly(writer)

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        """Return the next frame's content, or None at a clean end of stream."""
        # Bytes before the start block (line noise, keep-alive newlines) are
        # skipped, as MLLP receivers do, but no more than one frame's worth.
        skipped = 0
        while True:
            byte = await asyncio.wait_for(
                reader.read(1), self._options.idle_timeout_seconds
            )
            if not byte:
                return None
            if byte == START_BLOCK:
                break
            skipped += 1
            if skipped > self._options.max_frame_bytes:
                raise FrameTooLarge(
                    f"no start block (0x0B) within {self._options.max_frame_bytes} "
                    "bytes; frame each message as 0x0B, message, 0x1C 0x0D"
                )
        try:
            frame = await asyncio.wait_for(
                reader.readuntil(END_BLOCK), self._options.frame_timeout_seconds
            )
        except asyncio.LimitOverrunError:
            raise FrameTooLarge(self._too_large_text()) from None
        if len(frame) - len(END_BLOCK) > self._options.max_frame_bytes:
            raise FrameTooLarge(self._too_large_text())
        return frame[: -len(END_BLOCK)]

    async def _answer(self, frame: bytes) -> bytes:
        try:
            return await self._handler(frame)
        except Exception:
            # The handler turns every failure into an ACK itself. This guard
            # keeps an unexpected error from closing the connection without one.
            logger.exception("MLLP message handler failed")
            error = Hl7Error(
                "the message could not be processed; send it again later",
                code=CODE_APPLICATION_INTERNAL_ERROR,
            )
            return ack.build_ack(
                Header(),
                code=ack.ERROR,
                control_id=new_id(),
                now=now_utc(),
                error=error,
            )

    def _too_large_text(self) -> str:
        return (
            f"the frame is larger than {self._options.max_frame_bytes} bytes; split "
            "the message or ask for a larger HIN_LABS_MLLP_MAX_FRAME_BYTES"
        )

    def _too_large_ack(self, text: str) -> bytes:
        error = Hl7Error(text, code=CODE_DATA_TYPE_ERROR, reject=True)
        return ack.build_ack(
            Header(), code=ack.REJECT, control_id=new_id(), now=now_utc(), error=error
        )


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except ConnectionError:
        pass


async def _close_quietly(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass
