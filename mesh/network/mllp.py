"""Blocking MLLP client: send HL7 v2 messages and read their ACKs.

``hin labs send-hl7`` and the importers use it to feed the labs listener.
It speaks MLLP framing only (0x0B, message, 0x1C 0x0D) and depends on
nothing of svc_labs beyond the ACK format.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: Largest ACK accepted from the listener, in bytes.
MAX_ACK_BYTES = 64 * 1024


class MllpError(Exception):
    """The listener closed the connection or sent something that is not an ACK."""


@dataclass(frozen=True)
class Acknowledgment:
    """MSA-1 code, MSA-2 control id and ERR-8 text of one ACK."""

    code: str
    control_id: str
    error: str
    raw: bytes


def parse_ack(raw: bytes) -> Acknowledgment:
    """Read the MSA and ERR segments of an ACK that uses "|" as field separator."""
    fields: dict[str, list[str]] = {}
    for segment in (
        raw.decode("utf-8", errors="replace").replace("\n", "\r").split("\r")
    ):
        if segment[:3] in ("MSA", "ERR"):
            fields.setdefault(segment[:3], segment.split("|"))
    msa = fields.get("MSA")
    if msa is None or len(msa) < 2:
        raise MllpError("the reply has no MSA segment, so it is not an HL7 ACK")
    err = fields.get("ERR", [])
    return Acknowledgment(
        code=msa[1],
        control_id=_unescape(msa[2]) if len(msa) > 2 else "",
        error=_unescape(err[8]) if len(err) > 8 else "",
        raw=raw,
    )


def _unescape(text: str) -> str:
    r"""Decode the standard delimiter escapes (\F\ \S\ \T\ \R\ \E\)."""
    for sequence, char in (
        ("\\F\\", "|"),
        ("\\S\\", "^"),
        ("\\T\\", "&"),
        ("\\R\\", "~"),
        ("\\E\\", "\\"),
    ):
        text = text.replace(sequence, char)
    return text


class MllpClient:
    """One MLLP connection; each ``send`` waits for the message's ACK."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self._socket = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    @classmethod
    def connect(cls, address: str, *, timeout: float = 30.0) -> MllpClient:
        """Connect to ``host:port``."""
        host, _, port = address.rpartition(":")
        return cls(host.strip("[]"), int(port), timeout=timeout)

    def send(self, message: bytes) -> Acknowledgment:
        """Send one message and return its ACK.

        Raises:
            MllpError: the connection closed before a whole ACK arrived.
            TimeoutError: no ACK arrived within the timeout.
        """
        self._socket.sendall(START_BLOCK + message + END_BLOCK)
        while END_BLOCK not in self._buffer:
            chunk = self._socket.recv(65536)
            if not chunk:
                raise MllpError("the listener closed the connection before the ACK")
            self._buffer += chunk
            if len(self._buffer) > MAX_ACK_BYTES:
                raise MllpError(f"the ACK is larger than {MAX_ACK_BYTES} bytes")
        frame, _, self._buffer = self._buffer.partition(END_BLOCK)
        start = frame.find(START_BLOCK)
        return parse_ack(frame[start + 1 :] if start >= 0 else frame)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
