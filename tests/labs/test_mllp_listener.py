"""MLLP framing, limits and timeouts of the listener, with a recording handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from svc_labs.mllp import MllpListener, MllpOptions

pytestmark = pytest.mark.asyncio(loop_scope="session")

START, END = b"\x0b", b"\x1c\x0d"


class Recorder:
    """Handler that stores each frame and returns ACK-<n>."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def __call__(self, frame: bytes) -> bytes:
        self.frames.append(frame)
        return f"ACK-{len(self.frames)}".encode()


@pytest.fixture
async def listener() -> AsyncIterator[tuple[MllpListener, Recorder]]:
    recorder = Recorder()
    options = MllpOptions(
        port=0,
        max_frame_bytes=1000,
        idle_timeout_seconds=0.5,
        frame_timeout_seconds=0.5,
    )
    server = MllpListener(options=options, handler=recorder)
    await server.start()
    try:
        yield server, recorder
    finally:
        await server.stop()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    frame = await asyncio.wait_for(reader.readuntil(END), 10)
    return frame[1:-2]


async def test_several_messages_one_connection(
    listener: tuple[MllpListener, Recorder],
) -> None:
    server, recorder = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\r\n" + START + b"first" + END + START + b"second" + END)
    await writer.drain()
    assert await read_frame(reader) == b"ACK-1"
    assert await read_frame(reader) == b"ACK-2"
    assert recorder.frames == [b"first", b"second"]
    writer.close()


async def test_frame_split_across_writes(
    listener: tuple[MllpListener, Recorder],
) -> None:
    server, recorder = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for part in (START + b"MSH|", b"rest", b"\x1c", b"\x0d"):
        writer.write(part)
        await writer.drain()
    assert await read_frame(reader) == b"ACK-1"
    assert recorder.frames == [b"MSH|rest"]
    writer.close()


async def test_oversized_frame_rejected(
    listener: tuple[MllpListener, Recorder],
) -> None:
    server, recorder = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(START + b"x" * 5000 + END)
    await writer.drain()
    ack = await read_frame(reader)
    assert b"MSA|AR|" in ack
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert recorder.frames == []
    writer.close()


async def test_stalled_frame_disconnected(
    listener: tuple[MllpListener, Recorder],
) -> None:
    server, recorder = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(START + b"MSH|never finished")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert recorder.frames == []

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(START + b"next" + END)
    await writer.drain()
    assert await read_frame(reader) == b"ACK-1"
    writer.close()


async def test_idle_connection_closed(listener: tuple[MllpListener, Recorder]) -> None:
    server, _ = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_taken_port_fails_bind(listener: tuple[MllpListener, Recorder]) -> None:
    server, recorder = listener
    second = MllpListener(options=MllpOptions(port=server.port), handler=recorder)
    with pytest.raises(OSError):
        second.bind()


async def test_endless_noise_disconnected(
    listener: tuple[MllpListener, Recorder],
) -> None:
    server, recorder = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"noise " * 500)
    await writer.drain()
    assert b"MSA|AR|" in await read_frame(reader)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert recorder.frames == []
    writer.close()
