"""``hin labs send-hl7`` against the real listener."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from mesh.network.cli import build_parser
from mesh.network.cli.labs import send_hl7

from .conftest import Running


@pytest.mark.asyncio(loop_scope="session")
async def test_send_hl7_prints_ack_codes(labs: Running, shared_data: Path) -> None:
    files = [
        shared_data / "hl7v2" / "oru_r01_rubyhl7_1.hl7",
        shared_data / "hl7v2" / "siu_s12_pipehat_1.hl7",
    ]
    args = build_parser().parse_args(
        [
            "labs",
            "send-hl7",
            *map(str, files),
            "--address",
            f"127.0.0.1:{labs.mllp_port}",
        ]
    )
    out = io.StringIO()
    # The client blocks, and the listener runs on this event loop.
    code = await asyncio.to_thread(send_hl7, args, out)
    lines = out.getvalue().splitlines()
    assert code == 1
    assert lines[0] == "oru_r01_rubyhl7_1.hl7\tAA"
    assert lines[1].startswith("siu_s12_pipehat_1.hl7\tAR\tMSH #1 MSH-9:")
    assert "accepts ORU^R01, ORM^O01 and OML^O21" in lines[1]


def test_send_hl7_without_network(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--state", str(tmp_path), "labs", "send-hl7", "missing.hl7"]
    )
    assert send_hl7(args, io.StringIO()) == 2
