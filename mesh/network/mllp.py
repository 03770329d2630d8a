"""MLLP client: send HL7 v2 messages to a listener and read each ACK.

MLLP (HL7 v2 Minimal Lower Layer Protocol) frames a message as
``0x0B <message> 0x1C 0x0D``; the listener answers each frame with one ACK
frame on the same connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


class MllpError(Exception):
    """The connection closed or timed out before an ACK arrived."""


@dataclass(frozen=True)
class Acknowledgement:
    """One ACK: its raw bytes and the MSA-1 code (AA, AE, AR, CA, CE, CR)."""

    raw: bytes
    code: str
    #: Text of ERR-8 or MSA-3 when the message was not accepted.
    text: str


def frame(message: bytes) -> bytes:
    """Wrap one HL7 message in MLLP start and end blocks."""
    return START_BLOCK + message + END_BLOCK


def parse_ack(raw: bytes) -> Acknowledgement:
    """Read MSA-1 and the error text of an ACK; tolerate any terminator."""
    text = raw.decode("utf-8", errors="replace")
    segments = [
        s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s
    ]
    code, detail = "", ""
    for segment in segments:
        separator = segment[3:4] if segment.startswith("MSH") else "|"
        fields = segment.split(separator)
        if fields[0] == "MSA" and len(fields) > 1:
            code = fields[1]
            if len(fields) > 3 and fields[3]:
                detail = fields[3]
        if fields[0] == "ERR" and len(fields) > 8 and fields[8]:
            detail = fields[8]
    return Acknowledgement(raw=raw, code=code, text=detail)


class MllpClient:
    """One MLLP connection that sends messages in turn and waits for each ACK."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> MllpClient:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port), self._timeout
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass

    async def send(self, message: bytes) -> Acknowledgement:
        """Send one message and return its ACK; raise MllpError on failure."""
        if self._reader is None or self._writer is None:
            raise MllpError("client is not connected; use 'async with MllpClient(...)'")
        self._writer.write(frame(message))
        await self._writer.drain()
        try:
            await asyncio.wait_for(self._reader.readuntil(START_BLOCK), self._timeout)
            body = await asyncio.wait_for(
                self._reader.readuntil(END_BLOCK), self._timeout
            )
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
            raise MllpError(
                f"no ACK from {self._host}:{self._port}: {type(exc).__name__}"
            ) from exc
        return parse_ack(body[: -len(END_BLOCK)])


async def send_all(
    host: str, port: int, messages: Iterable[bytes], *, ack_timeout: float = 30.0
) -> list[Acknowledgement]:
    """Send messages over one connection, in order, and return their ACKs."""
    async with MllpClient(host, port, timeout=ack_timeout) as client:
        return [await client.send(message) for message in messages]
