"""--state may stand before the subcommand or after a nested one."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.network.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--state", "/tmp/s", "audit", "verify"],
        ["audit", "verify", "--state", "/tmp/s"],
        ["dlq", "list", "--state", "/tmp/s"],
        ["up", "--state", "/tmp/s"],
    ],
)
def test_state_option_anywhere(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).state == Path("/tmp/s")


def test_state_defaults_to_hin_folder() -> None:
    assert build_parser().parse_args(["status"]).state == Path(".hin")
