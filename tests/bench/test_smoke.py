"""The benchmark suite completes in its smoke form (no timing is checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FIGURES = ("## query", "## event", "## hl7", "## fhir", "## up", "## isolation")


def test_bench_smoke_writes_every_figure(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "RESULTS.md"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--data",
            str(shared_data),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    page = out.read_text()
    missing = [figure for figure in FIGURES if figure not in page]
    assert missing == []
